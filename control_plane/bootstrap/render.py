"""Render an Envoy bootstrap (YAML) for one dataplane from bootstrap_templates/. Pure: no I/O
beyond reading the packaged template."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import jinja2

from kuma_common import dp_contract as contract

TEMPLATE = "bootstrap.yaml.j2"


@dataclass(frozen=True)
class BootstrapParams:
    mesh: str
    name: str
    service: str
    dataplane_json: str | None  # the Dataplane sent by the agent (universal), if any
    cp_host: str  # how Envoy reaches the DP server (the host the agent used)
    cp_port: int
    ca_cert: str  # PEM the agent trusts for the control plane
    workdir: str
    admin_port: int | None  # None: a 0600 Unix socket in the work dir
    token: str | None = None
    proxy_type: str = contract.DATAPLANE_PROXY_TYPE
    version: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = ()
    dynamic_metadata: dict[str, str] = field(default_factory=dict)
    readiness_port: int | None = None
    # Who the proxy is, read by Envoy for outbound access logs (meshaccesslog/formats.py).
    access_log_source: dict[str, str] | None = None


@cache
def _template() -> jinja2.Template:
    text = resources.files("bootstrap_templates").joinpath(TEMPLATE).read_text()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.policies["json.dumps_kwargs"] = {"sort_keys": True}
    return env.from_string(text)


def node_metadata(params: BootstrapParams) -> dict[str, Any]:
    meta: dict[str, Any] = {
        contract.PROXY_TYPE_METADATA_KEY: params.proxy_type,
        contract.WORKDIR_METADATA_KEY: params.workdir,
        contract.VERSION_METADATA_KEY: params.version,
        contract.FEATURES_METADATA_KEY: list(params.features),
        contract.DYNAMIC_METADATA_KEY: params.dynamic_metadata,
    }
    if params.dataplane_json is not None:
        meta[contract.RESOURCE_METADATA_KEY] = params.dataplane_json
    if params.admin_port is not None:
        meta[contract.ADMIN_PORT_METADATA_KEY] = str(params.admin_port)
    if params.readiness_port is not None:
        meta[contract.READINESS_PORT_METADATA_KEY] = str(params.readiness_port)
    if params.access_log_source is not None:
        meta[contract.ACCESS_LOG_METADATA_KEY] = params.access_log_source
    return meta


def admin_socket_path(workdir: str) -> str:
    return f"{workdir.rstrip('/')}/{contract.ADMIN_SOCKET_NAME}"


def render_bootstrap(params: BootstrapParams) -> str:
    host = params.cp_host.strip("[]")
    return _template().render(
        node_id=f"{params.mesh}.{params.name}",
        service=params.service,
        metadata=node_metadata(params),
        admin_pipe=None if params.admin_port is not None else admin_socket_path(params.workdir),
        admin_port=params.admin_port,
        token=params.token,
        token_header=contract.TOKEN_HEADER,
        cp_host=host,
        cp_host_is_ip=_is_ip(host),
        cp_port=params.cp_port,
        ca_cert=params.ca_cert,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def dataplane_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))
