"""`kumactl`: apply, get, delete and config, talking to the control plane's REST API only."""

from __future__ import annotations

from typing import Any

import click

from control_plane.kumactl import tokens_cmd, user_token_cmd
from control_plane.kumactl.client import collection_path, resource_path
from control_plane.kumactl.config_cmd import config_group
from control_plane.kumactl.context import api_client
from control_plane.kumactl.documents import (
    Document,
    apply_order,
    check_all,
    parse_documents,
    parse_vars,
    read_source,
    substitute,
)
from control_plane.kumactl.export_cmd import export
from control_plane.kumactl.inspect_cmd import inspect
from control_plane.kumactl.output import FORMATS, render_document, render_table
from control_plane.kumactl.tls_cmd import tls_certificate
from control_plane.kumactl.tproxy_cmd import install, uninstall
from control_plane.resources.common import DEFAULT_MESH
from control_plane.resources.registry import TYPES, ResourceType

MAX_PAGE_SIZE = 1000  # the API's largest page (control_plane.api.resources)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="kumactl config file (default: $KUMACTL_CONFIG or ~/.kumactl/config)",
)
def main(config_file: str | None) -> None:
    """Manage a Kuma(-py) control plane through its REST API."""


main.add_command(config_group)
main.add_command(export)
main.add_command(inspect)
main.add_command(install)
main.add_command(uninstall)
main.add_command(tokens_cmd.generate)
main.add_command(tokens_cmd.revoke)
main.add_command(tokens_cmd.rotate)
tokens_cmd.generate.add_command(tls_certificate)
tokens_cmd.generate.add_command(user_token_cmd.user_token)


# --- apply ----------------------------------------------------------------------------------------


@main.command()
@click.option("-f", "--file", "source", required=True, help="YAML file of resources, or - for stdin")
@click.option("-v", "--var", "variables", multiple=True, help="replace {{ key }} by value (key=value)")
@click.option("--dry-run", is_flag=True, help="print the resources and where they would go; send nothing")
@click.pass_context
def apply(ctx: click.Context, source: str, variables: tuple[str, ...], dry_run: bool) -> None:
    """Create or update the resources of a file (several documents separated by ---)."""
    text, name = read_source(source)
    documents = apply_order(parse_documents(substitute(text, parse_vars(variables), name), name))
    check_all(documents)  # every document is valid, or nothing is sent
    if dry_run:
        click.echo("\n---\n".join(_dry_run_text(doc) for doc in documents))
        return
    with api_client(ctx) as client:
        for doc in documents:
            what = f"{doc.describe()} ({doc.source}:{doc.line})"
            created = client.put(_path_of(doc), doc.body, what=what)
            click.echo(f"{'created' if created else 'updated'} {doc.describe()}")


def _path_of(doc: Document) -> str:
    return resource_path(doc.rtype, doc.name, doc.mesh)


def _dry_run_text(doc: Document) -> str:
    return f"# PUT {_path_of(doc)}\n{render_document(doc.body, 'yaml')}"


# --- get / delete, one subcommand per registered type ----------------------------------------------

_output_option = click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="output format",
)
_mesh_option = click.option(
    "-m", "--mesh", default=DEFAULT_MESH, show_default=True, help="mesh of the resource"
)


@main.group()
def get() -> None:
    """Show resources."""


@main.group()
def delete() -> None:
    """Delete a resource."""


def _list_command(rtype: ResourceType) -> click.Command:
    @click.pass_context
    def command(
        ctx: click.Context,
        fmt: str,
        size: int | None,
        offset: int | None,
        mesh: str = DEFAULT_MESH,
        all_meshes: bool = False,
    ) -> None:
        path = collection_path(rtype, None if all_meshes else mesh)
        with api_client(ctx) as client:
            if size is None and offset is None:  # everything, page after page
                body = client.list_all(path, MAX_PAGE_SIZE)
            else:  # one page, as asked, with its `next`
                params = {"size": size, "offset": offset}
                body = client.get(path, params={k: v for k, v in params.items() if v is not None})
        _print_list(rtype, body, fmt)

    command.__doc__ = f"List {rtype.name} resources" + (" of a mesh." if rtype.mesh_scoped else ".")
    options = [
        _output_option,
        click.option("--size", type=click.IntRange(1, MAX_PAGE_SIZE), help="one page of this many items"),
        click.option("--offset", type=click.IntRange(0), help="start of the page (with --size)"),
    ]
    if rtype.mesh_scoped:
        options.append(_mesh_option)
        options.append(click.option("-A", "--all-meshes", is_flag=True, help="list in every mesh"))
    for option in options:
        command = option(command)
    return click.command(rtype.plural)(command)


def _print_list(rtype: ResourceType, body: dict[str, Any], fmt: str) -> None:
    if fmt == "table":
        click.echo(render_table(rtype, body.get("items") or []))
        if body.get("next"):
            click.echo(f"(more: {body['next']})")
    else:
        shaped = {"items": body.get("items") or [], "total": body.get("total", 0), "next": body.get("next")}
        click.echo(render_document(shaped, fmt))


def _get_command(rtype: ResourceType) -> click.Command:
    @click.argument("name")
    @_output_option
    @click.pass_context
    def command(ctx: click.Context, name: str, fmt: str, mesh: str = DEFAULT_MESH) -> None:
        with api_client(ctx) as client:
            document = client.get(resource_path(rtype, name, mesh))
        click.echo(render_table(rtype, [document]) if fmt == "table" else render_document(document, fmt))

    command.__doc__ = f"Show one {rtype.name}."
    if rtype.mesh_scoped:
        command = _mesh_option(command)
    return click.command(rtype.name.lower())(command)


def _delete_command(rtype: ResourceType) -> click.Command:
    @click.argument("name")
    @click.pass_context
    def command(ctx: click.Context, name: str, mesh: str = DEFAULT_MESH) -> None:
        with api_client(ctx) as client:
            client.delete(resource_path(rtype, name, mesh))
        click.echo(f'deleted {rtype.name} "{name}"')

    command.__doc__ = f"Delete a {rtype.name}" + (" and everything in it." if rtype.name == "Mesh" else ".")
    if rtype.mesh_scoped:
        command = _mesh_option(command)
    return click.command(rtype.name.lower())(command)


for _rtype in TYPES.values():
    get.add_command(_list_command(_rtype))
    get.add_command(_get_command(_rtype))
    delete.add_command(_delete_command(_rtype))
delete.add_command(tokens_cmd.delete_signing_key)
