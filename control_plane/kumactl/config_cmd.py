"""`kumactl config control-planes add|list|switch|remove`."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlparse

import click

from control_plane.kumactl import config_file
from control_plane.kumactl.context import config_path_of
from control_plane.kumactl.errors import KumactlError


@click.group("config")
def config_group() -> None:
    """Manage kumactl's configuration."""


@config_group.group("control-planes")
def control_planes() -> None:
    """Manage the control planes kumactl knows."""


@control_planes.command("add")
@click.option("--name", required=True, help="reference name for the control plane")
@click.option(
    "--address", required=True, help="URL of its API server, e.g. http://localhost:5681 or https://cp:5682"
)
@click.option("--overwrite", is_flag=True, help="replace a control plane of the same name")
@click.option("--auth-type", default="", help='authentication type: "tokens" (a user token)')
@click.option("--auth-conf", multiple=True, help="authentication configuration, key=value (token=YOUR_TOKEN)")
@click.option(
    "--ca-cert-file",
    default="",
    help="CA certificate that verifies an https:// control plane (kumactl stores only its path)",
)
@click.option("--skip-verify", is_flag=True, help="do not verify an https:// control plane's certificate")
@click.pass_context
def add(
    ctx: click.Context,
    name: str,
    address: str,
    overwrite: bool,
    auth_type: str,
    auth_conf: tuple[str, ...],
    ca_cert_file: str,
    skip_verify: bool,
) -> None:
    """Add a control plane and make it the active one."""
    path = config_path_of(ctx)
    config = config_file.load(path)
    extras = {
        "authType": auth_type,
        "authConf": _auth_conf(auth_type, auth_conf),
        "caCertFile": str(Path(ca_cert_file).resolve()) if ca_cert_file else "",
        "skipVerify": skip_verify,
    }
    config.add(name, address, overwrite, extras)
    if extras["authConf"] and _clear_text_off_host(address):
        click.echo(
            f"Warning: {address} is plain HTTP to another host: the token travels in clear text. "
            "Prefer the HTTPS API (https://HOST:5682, with --ca-cert-file).",
            err=True,
        )
    config_file.save(path, config)
    click.echo(f'added Control Plane "{name}"')
    click.echo(f'switched active Control Plane to "{name}"')


def _clear_text_off_host(address: str) -> bool:
    parsed = urlparse(address)
    host = (parsed.hostname or "").lower()
    if parsed.scheme != "http" or host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _auth_conf(auth_type: str, pairs: tuple[str, ...]) -> dict[str, str]:
    conf: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise KumactlError(
                f"--auth-conf {pair.split('=')[0]!r}: expected key=value, e.g. token=YOUR_TOKEN"
            )
        conf[key] = value
    if not auth_type:
        if conf:
            raise KumactlError("--auth-conf needs --auth-type (tokens)")
        return conf
    if auth_type not in config_file.AUTH_TYPES:
        raise KumactlError(f'authentication plugin of type "{auth_type}" is not found (known: tokens)')
    if not conf.get("token"):
        raise KumactlError("--auth-conf is not valid: provide token=YOUR_TOKEN")
    return conf


@control_planes.command("list")
@click.pass_context
def list_cps(ctx: click.Context) -> None:
    """List the control planes; the active one is marked with *."""
    config = config_file.load(config_path_of(ctx))
    active = config.contexts.get(config.current_context)
    rows = [("ACTIVE", "NAME", "ADDRESS")]
    rows += [("*" if name == active else "", name, url) for name, url in config.control_planes.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        click.echo("   ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@control_planes.command("switch")
@click.option("--name", required=True, help="the control plane to make active")
@click.pass_context
def switch(ctx: click.Context, name: str) -> None:
    """Make another known control plane the active one."""
    path = config_path_of(ctx)
    config = config_file.load(path)
    config.switch(name)
    config_file.save(path, config)
    click.echo(f'switched active Control Plane to "{name}"')


@control_planes.command("remove")
@click.option("--name", required=True, help="the control plane to forget")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Forget a control plane."""
    path = config_path_of(ctx)
    config = config_file.load(path)
    config.remove(name)
    config_file.save(path, config)
    click.echo(f'removed Control Plane "{name}"')
