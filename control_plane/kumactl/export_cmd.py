"""`kumactl export`: every resource of a control plane as multi-document YAML (or JSON) that
`kumactl apply -f` recreates on another one, e.g. to move from SQLite to PostgreSQL
(docs/migration.md). Reads through the REST API only; the order and shape are export_plan's."""

from __future__ import annotations

from typing import Any

import click

from control_plane.kumactl import export_plan
from control_plane.kumactl.client import ApiClient, collection_path
from control_plane.kumactl.context import api_client
from control_plane.kumactl.errors import KumactlError
from control_plane.resources.registry import ResourceType

MAX_PAGE_SIZE = 1000  # the API's largest page


@click.command("export")
@click.option(
    "-p",
    "--profile",
    type=click.Choice(export_plan.PROFILES),
    default=export_plan.PROFILE_ALL,
    show_default=True,
    help="which resources: all; no-dataplanes; federation (Meshes and secrets); "
    "federation-with-policies (and policies)",
)
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(export_plan.FORMATS),
    default=export_plan.FORMAT_UNIVERSAL,
    show_default=True,
    help="resource format (this control plane runs in universal mode)",
)
@click.option("-o", "--output", type=click.Choice(export_plan.OUTPUTS), default="yaml", show_default=True)
@click.option(
    "--include-admin/--no-include-admin",
    "-a",
    default=True,
    show_default=True,
    help="include the admin-only types (secrets: mesh CAs, token signing keys; virtual IPs), "
    "without which a moved mesh's certificates and tokens stop working",
)
@click.pass_context
def export(ctx: click.Context, profile: str, fmt: str, output: str, include_admin: bool) -> None:
    """Export resources as documents `kumactl apply -f` takes, in an order it can apply."""
    if fmt == export_plan.FORMAT_KUBERNETES:
        raise KumactlError(
            "--format kubernetes is not supported: this control plane runs in universal mode only "
            "and keeps no Kubernetes objects; use --format universal"
        )
    types = export_plan.export_types(profile, include_admin)
    with api_client(ctx) as client:
        header = _server_header(client)
        listed = {rtype.name: _list(client, rtype) for rtype in types}
    documents = export_plan.plan(listed, types, profile)
    click.echo(export_plan.render(documents, output, header), nl=False)


def _list(client: ApiClient, rtype: ResourceType) -> list[dict[str, Any]]:
    what = f"cannot export {rtype.plural}"
    try:
        body = client.list_all(collection_path(rtype, None), MAX_PAGE_SIZE)
    except KumactlError as exc:
        hint = " (or leave the secrets out: --no-include-admin)" if rtype.admin_only else ""
        raise KumactlError(f"{what}: {exc.message}{hint}") from None
    return [item for item in body.get("items") or [] if isinstance(item, dict)]


def _server_header(client: ApiClient) -> str | None:
    """Which control plane this came from, as Kuma's first line says."""
    index = client.get("/")
    if not isinstance(index, dict):
        return None
    return (
        f"Product: {index.get('product', '?')}, Version: {index.get('version', '?')}, "
        f"Hostname: {index.get('hostname', '?')}"
    )
