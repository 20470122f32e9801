"""`kumactl config control-planes add|list|switch|remove`."""

from __future__ import annotations

import click

from control_plane.kumactl import config_file
from control_plane.kumactl.context import config_path_of


@click.group("config")
def config_group() -> None:
    """Manage kumactl's configuration."""


@config_group.group("control-planes")
def control_planes() -> None:
    """Manage the control planes kumactl knows."""


@control_planes.command("add")
@click.option("--name", required=True, help="reference name for the control plane")
@click.option("--address", required=True, help="URL of its API server, e.g. http://localhost:5681")
@click.option("--overwrite", is_flag=True, help="replace a control plane of the same name")
@click.pass_context
def add(ctx: click.Context, name: str, address: str, overwrite: bool) -> None:
    """Add a control plane and make it the active one."""
    path = config_path_of(ctx)
    config = config_file.load(path)
    config.add(name, address, overwrite)
    config_file.save(path, config)
    click.echo(f'added Control Plane "{name}"')
    click.echo(f'switched active Control Plane to "{name}"')


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
