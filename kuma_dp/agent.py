"""The agent: bootstrap, then Envoy under supervision, readiness alongside, drain on shutdown.

One asyncio.TaskGroup owns the long-running pieces; signals only set events that the pieces
wait on, so every task and every Envoy process is awaited and reaped before `run_agent` returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kuma_dp import bootstrap_client as bc
from kuma_dp.config import RunConfig
from kuma_dp.constants import BOOTSTRAP_FILE_MODE, BOOTSTRAP_FILE_NAME
from kuma_dp.drain import drain_and_stop, drain_inbound
from kuma_dp.envoy.admin import AdminAddress, EnvoyAdmin, admin_address_from_bootstrap
from kuma_dp.envoy.binary import EnvoyVersion, VersionProbe
from kuma_dp.envoy.process import EnvoyLaunch, EnvoyProcess
from kuma_dp.errors import AgentError, BootstrapError
from kuma_dp.readiness import ReadinessState, start_readiness_server
from kuma_dp.signals import Shutdown, installed
from kuma_dp.supervisor import RestartPolicy, supervise
from kuma_dp.workdir import work_dir, write_private_file

log = logging.getLogger("agent")
T = TypeVar("T")


async def run_agent(config: RunConfig, binary: Path, version_probe: VersionProbe) -> None:
    """Run until a stop signal (returns) or a fatal error (raises AgentError).

    `binary` is the resolved Envoy; `version_probe` its `--version` run, started by the caller early.
    """
    readiness = ReadinessState()
    shutdown = Shutdown(on_first=lambda: setattr(readiness, "terminating", True))
    inbound_drains: asyncio.TaskGroup | None = None  # owner of SIGUSR2 work, once Envoy can run

    def on_usr2() -> None:
        if inbound_drains is not None and readiness.admin is not None:
            inbound_drains.create_task(drain_inbound(readiness.admin))
        else:
            log.info("received SIGUSR2 before Envoy started: nothing to drain")

    # Handlers first, so that a signal at any point below ends in an orderly exit and cleanup.
    with installed(shutdown, on_usr2):
        envoy_version = version_probe.result()
        log.info("Envoy %s (%s)", envoy_version.version, binary)
        ca = bc.load_trusted_ca(config)
        bc.ssl_context(ca)  # fail now on a CA that is not PEM
        token = bc.read_token(config)
        with work_dir(config.work_dir) as workdir:
            server = await start_readiness_server(readiness, config.readiness_address, config.readiness_port)
            log.info("readiness on http://%s:%d/ready", config.readiness_address, config.readiness_port)
            try:
                async with server, asyncio.TaskGroup() as tasks:
                    inbound_drains = tasks
                    serving = tasks.create_task(server.serve_forever())
                    try:
                        await _bootstrap_and_run(
                            config, binary, envoy_version, ca, token, workdir, readiness, shutdown
                        )
                    finally:
                        inbound_drains = None
                        serving.cancel()
            except BaseExceptionGroup as group:
                raise _first_agent_error(group) from None


async def _bootstrap_and_run(
    config: RunConfig,
    binary: Path,
    envoy_version: EnvoyVersion,
    ca: bc.TrustedCa | None,
    token: str,
    workdir: Path,
    readiness: ReadinessState,
    shutdown: Shutdown,
) -> None:
    body = bc.request_body(config, token, envoy_version, ca, workdir)
    log.info("fetching bootstrap from %s for %s.%s", config.cp_address, config.mesh, config.name)
    response = await _unless_shutdown(bc.fetch_bootstrap(config, body, ca), shutdown.requested)
    if response is None:
        log.info("stopped before Envoy was started")
        return
    bootstrap_path = workdir / BOOTSTRAP_FILE_NAME
    write_private_file(bootstrap_path, response.bootstrap_yaml, BOOTSTRAP_FILE_MODE)
    address = admin_address_from_bootstrap(_parse_bootstrap(response.bootstrap_yaml))
    log.info("bootstrap written to %s; Envoy admin at %s", bootstrap_path, address.describe())
    admin = EnvoyAdmin(address)
    readiness.admin = admin
    launch = EnvoyLaunch(
        binary, bootstrap_path, config.drain_time_s, config.envoy_log_level, config.concurrency
    )
    policy = RestartPolicy(config.max_envoy_restarts, config.envoy_restart_window_s)

    async def on_shutdown(envoy: EnvoyProcess) -> None:
        await drain_and_stop(envoy, admin, config.drain_time_s, shutdown.forced)

    try:
        await supervise(
            launch, policy, shutdown.requested, on_shutdown, lambda: _remove_stale_socket(address)
        )
    finally:
        readiness.admin = None
        await admin.aclose()


async def _unless_shutdown(work: Awaitable[T], requested: asyncio.Event) -> T | None:
    """Await `work` unless shutdown is requested first (then cancel it and return None)."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(requested.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return None if task.cancelled() else task.result()


def _parse_bootstrap(text: bytes) -> dict[str, Any]:
    try:
        document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise BootstrapError(f"the control plane sent a bootstrap that is not YAML: {exc}") from None
    if not isinstance(document, dict):
        raise BootstrapError("the control plane sent a bootstrap that is not a YAML mapping")
    return document


def _remove_stale_socket(address: AdminAddress) -> None:
    """A crashed Envoy leaves its admin socket file behind; a restart could not bind it."""
    if address.pipe is not None:
        address.pipe.unlink(missing_ok=True)


def _first_agent_error(group: BaseExceptionGroup) -> BaseException:
    """Unwrap the TaskGroup's group: the user-facing error if any, else the first exception."""
    matched = group.subgroup(AgentError)
    found: BaseException = matched.exceptions[0] if matched else group.exceptions[0]
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found
