"""`kumactl inspect dataplane NAME --type=rules`: the policies that apply to one proxy, per inbound
and outbound, with the conf they merge to and the policies that made it (GET .../_rules).
`kumactl inspect vips`: each service's virtual IP, names and ports (GET /meshes/{mesh}/vips)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import click

from control_plane.kumactl.client import resource_path
from control_plane.kumactl.context import api_client
from control_plane.kumactl.output import FORMATS, render_document, render_rows
from control_plane.resources.common import DEFAULT_MESH
from control_plane.resources.registry import DATAPLANE

INSPECTION_TYPES = ("rules",)
HEADERS = ("TYPE", "WHERE", "FOR", "CONF", "ORIGIN")


@click.group()
def inspect() -> None:
    """Show what the control plane computed for a resource."""


@inspect.command("dataplane")
@click.argument("name")
@click.option("-m", "--mesh", default=DEFAULT_MESH, show_default=True, help="mesh of the Dataplane")
@click.option(
    "--type",
    "inspection",
    type=click.Choice(INSPECTION_TYPES),
    default="rules",
    show_default=True,
    help="what to show: the policies' rules for each inbound and outbound",
)
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def dataplane(ctx: click.Context, name: str, mesh: str, inspection: str, fmt: str) -> None:
    """Inspect one Dataplane."""
    with api_client(ctx) as client:
        body = client.get(resource_path(DATAPLANE, name, mesh) + "/_rules")
    if fmt != "table":
        click.echo(render_document(body, fmt))
        return
    rows = list(rule_rows(body))
    click.echo(render_rows([HEADERS, *rows]) if rows else f'no policy applies to Dataplane "{name}"')


def rule_rows(body: Mapping[str, Any]) -> Iterator[tuple[str, ...]]:
    for entry in body.get("rules", []):
        kind = entry["type"]
        for rule in entry.get("toRules", []):
            target = _matchers(rule["matchers"]) or "every other service"
            yield kind, "outbound", target, flatten(rule["conf"]), _origin(rule["origin"])
        for block in entry.get("fromRules", []):
            where = _inbound(block["inbound"])
            for rule in block["rules"]:
                caller = _matchers(rule["matchers"]) or "every other caller"
                yield kind, where, caller, flatten(rule["conf"]), _origin(rule["origin"])
        for block in entry.get("inboundRules", []):
            where = _inbound(block["inbound"])
            for rule in block["rules"]:
                who = (
                    "; ".join(json.dumps(m, separators=(",", ":")) for m in rule.get("matches", []))
                    or "all callers"
                )
                yield kind, where, who, flatten(rule["conf"]), _origin(rule["origin"])
        if "proxyRule" in entry:
            rule = entry["proxyRule"]
            yield kind, "proxy", "-", flatten(rule["conf"]), _origin(rule["origin"])


def flatten(conf: Any, prefix: str = "") -> str:
    """`{"http": {"requestTimeout": "1s"}}` → `http.requestTimeout=1s` (lists stay JSON)."""
    if isinstance(conf, Mapping) and conf:
        return " ".join(flatten(value, f"{prefix}{key}.") for key, value in conf.items())
    value = conf if isinstance(conf, str) else json.dumps(conf, separators=(",", ":"))
    return f"{prefix.rstrip('.')}={value}"


def _matchers(matchers: list[Mapping[str, Any]]) -> str:
    return ",".join(f"{m['key']}{'!=' if m.get('not') else '='}{m['value']}" for m in matchers)


def _origin(origins: list[Mapping[str, Any]]) -> str:
    return ", ".join(o["name"] for o in origins)


def _inbound(inbound: Mapping[str, Any]) -> str:
    name = f" ({inbound['name']})" if inbound.get("name") else ""
    return f"inbound {inbound['port']}{name}"


VIPS_HEADERS = ("SERVICE", "VIP", "NAMES", "PORTS", "RELEASE AFTER")


@inspect.command("vips")
@click.option("-m", "--mesh", default=DEFAULT_MESH, show_default=True, help="mesh whose VIPs to show")
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def vips(ctx: click.Context, mesh: str, fmt: str) -> None:
    """The virtual IP and DNS names of each service of a mesh."""
    with api_client(ctx) as client:
        body = client.get(f"/meshes/{mesh}/vips")
    if fmt != "table":
        click.echo(render_document(body, fmt))
        return
    if not body.get("serviceVipEnabled", True):
        click.echo("service VIPs are off on this control plane (KUMA_DNS_SERVER_SERVICE_VIP_ENABLED=false)")
        return
    rows = [
        (
            item["service"],
            item["ip"],
            ",".join(item["names"]) or "-",
            ",".join(map(str, item["ports"])) or "-",
            item.get("releaseAfter", "-"),
        )
        for item in body.get("items", [])
    ]
    click.echo(render_rows([VIPS_HEADERS, *rows]) if rows else f'mesh "{mesh}" has no service with a VIP yet')
