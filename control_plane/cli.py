"""`kuma-cp run`: parse the configuration and wire the components; the work lives elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import click
import prometheus_client

from control_plane.config import ConfigError, CpConfig, load_config

log = logging.getLogger("kuma-cp")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Kuma-compatible control plane."""


@main.command()
@click.option("-c", "--config-file", type=click.Path(dir_okay=False), help="kuma-cp.yaml (Kuma's layout)")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def run(config_file: str | None, log_level: str) -> None:
    """Run the control plane: REST API, DP server (bootstrap + ADS) and the store."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for key in config.ignored_keys:
        log.warning("configuration key %s is not supported by this control plane; ignored", key)
    # Kuma's metrics carry no `*_created` series; the switch is the client library's, process-wide.
    prometheus_client.disable_created_metrics()
    try:
        asyncio.run(_serve(config))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


def stop_reason(exc: BaseException) -> str:
    """What stopped the control plane, in words: the errors inside its TaskGroup's group (whose
    own text, "unhandled errors in a TaskGroup", says nothing)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(stop_reason(inner) for inner in exc.exceptions))
    return str(exc) or type(exc).__name__


class StartupError(Exception):
    """The control plane cannot start with this configuration or environment."""


async def _serve(config: CpConfig) -> None:
    from control_plane.runtime import ControlPlane, RuntimeStartError

    try:
        cp = ControlPlane.open(config)
    except RuntimeStartError as exc:
        raise StartupError(str(exc)) from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(cp.close)
        runner = asyncio.create_task(cp.run())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if runner in done:
            stopper.cancel()
            exc = runner.exception()
            if exc is not None:
                raise StartupError(f"control plane stopped: {stop_reason(exc)}") from None
            return
        log.info("stopping")
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


@main.group()
def migrate() -> None:
    """Schema migrations of the store (run once per upgrade, before the new kuma-cp)."""


@migrate.command("up")
@click.option("-c", "--config-file", type=click.Path(dir_okay=False), help="kuma-cp.yaml (Kuma's layout)")
def migrate_up(config_file: str | None) -> None:
    """Apply the store's missing schema migrations (a no-op when there are none)."""
    from control_plane.store.base import StoreError
    from control_plane.store.migrate import migrate_up as apply

    try:
        config = load_config(config_file)
        click.echo(apply(config))
    except (ConfigError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
