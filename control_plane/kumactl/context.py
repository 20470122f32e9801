"""What every kumactl command gets from the global flags: the config file and the API client."""

from __future__ import annotations

from pathlib import Path

import click

from control_plane.kumactl import config_file
from control_plane.kumactl.client import ApiClient


def config_path_of(ctx: click.Context) -> Path:
    root = ctx.find_root()
    flag = root.params.get("config_file") if root.params else None
    return config_file.config_path(flag)


def api_client(ctx: click.Context) -> ApiClient:
    config = config_file.load(config_path_of(ctx))
    extras = config.current_extras()
    token = (extras.get("authConf") or {}).get("token") if extras.get("authType") == "tokens" else None
    verify: str | bool = extras.get("caCertFile") or True
    if extras.get("skipVerify"):
        verify = False
    return ApiClient(config.current_url(), token=token, verify=verify)
