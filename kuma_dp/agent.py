"""The agent: bootstrap, identity, then Envoy under supervision, readiness alongside, drain on shutdown.

One asyncio.TaskGroup owns the long-running pieces; signals only set events that the pieces
wait on, so every task and every Envoy process is awaited and reaped before `run_agent` returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kuma_dp import bootstrap_client as bc
from kuma_dp.accesslogs import start_access_log_streamer
from kuma_dp.config import RunConfig
from kuma_dp.constants import BOOTSTRAP_FILE_MODE, BOOTSTRAP_FILE_NAME, DEFAULT_PROXY_TYPE
from kuma_dp.dns.component import dns_wanted, dns_wanted_by_sidecar, start_dns
from kuma_dp.drain import drain_and_stop, drain_inbound
from kuma_dp.envoy.admin import AdminAddress, EnvoyAdmin, admin_address_from_bootstrap
from kuma_dp.envoy.binary import EnvoyVersion, VersionProbe
from kuma_dp.envoy.process import EnvoyLaunch, EnvoyProcess
from kuma_dp.errors import AgentError, BootstrapError
from kuma_dp.identity.client import CertificateClient, NoCertificateEndpoint
from kuma_dp.identity.keygen import EarlyKeygen
from kuma_dp.identity.renewal import WorkloadIdentity
from kuma_dp.identity.sds import IdentityPaths
from kuma_dp.identity.services import spiffe_ids
from kuma_dp.identity.token_refusal import watch_token_refusal
from kuma_dp.identity.token_rotation import TokenRotation
from kuma_dp.metrics.component import run_metrics
from kuma_dp.readiness import ReadinessState, start_readiness_server
from kuma_dp.signals import Shutdown, installed
from kuma_dp.supervisor import RestartPolicy, supervise
from kuma_dp.token_source import TokenSource
from kuma_dp.workdir import work_dir, write_private_file

log = logging.getLogger("agent")
T = TypeVar("T")


async def run_agent(
    config: RunConfig, binary: Path, version_probe: VersionProbe, first_key: EarlyKeygen | None = None
) -> None:
    """Run until a stop signal (returns) or a fatal error (raises AgentError).

    `binary` is the resolved Envoy; `version_probe` its `--version` run and `first_key` the child
    making the first key and CSR (for the Dataplane's SPIFFE IDs), both started by the caller early.
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
        tokens = TokenSource(config.token, config.token_path)
        with work_dir(config.work_dir) as workdir:
            server = await start_readiness_server(readiness, config.readiness_address, config.readiness_port)
            log.info("readiness on http://%s:%d/ready", config.readiness_address, config.readiness_port)
            wanted = dns_wanted(config)
            try:
                dns = start_dns(config, workdir) if wanted else None
            except AgentError:
                server.close()
                raise
            try:
                async with server, asyncio.TaskGroup() as tasks:
                    inbound_drains = tasks
                    serving = [tasks.create_task(server.serve_forever())]
                    if dns is not None:
                        serving.append(tasks.create_task(dns.run()))
                    # Before Envoy starts: its Tcp access logs go into this FIFO (never blocking it).
                    access_logs = start_access_log_streamer(workdir, config.name, config.mesh)
                    streaming = [tasks.create_task(access_logs.run())] if access_logs is not None else []

                    def on_sidecar(sidecar: dict[str, Any]) -> None:
                        """A Dataplane given by name: DNS once the control plane says it is transparent."""
                        if wanted is None and dns_wanted_by_sidecar(sidecar) and len(serving) == 1:
                            serving.append(tasks.create_task(start_dns(config, workdir).run()))

                    try:
                        await _bootstrap_and_run(
                            config, binary, envoy_version, ca, tokens, workdir, readiness, shutdown,
                            first_key, on_sidecar,
                        )  # fmt: skip
                    finally:
                        inbound_drains = None
                        for task in [*serving, *streaming]:
                            task.cancel()
            except BaseExceptionGroup as group:
                raise _first_agent_error(group) from None


async def _bootstrap_and_run(
    config: RunConfig,
    binary: Path,
    envoy_version: EnvoyVersion,
    ca: bc.TrustedCa | None,
    tokens: TokenSource,
    workdir: Path,
    readiness: ReadinessState,
    shutdown: Shutdown,
    first_key: EarlyKeygen | None,
    on_sidecar: Callable[[dict[str, Any]], None],
) -> None:
    """`on_sidecar` is given each bootstrap response's sidecar configuration."""
    bootstrap_path = workdir / BOOTSTRAP_FILE_NAME

    async def fetch_and_write_bootstrap() -> bytes:
        body = bc.request_body(config, tokens.current(), envoy_version, ca, workdir)
        response = await bc.fetch_bootstrap(config, body, ca)
        write_private_file(bootstrap_path, response.bootstrap_yaml, BOOTSTRAP_FILE_MODE)
        on_sidecar(response.sidecar_configuration)
        return response.bootstrap_yaml

    async def probe_token() -> object:
        """One bootstrap request with the current token, only to learn whether the CP accepts it."""
        return await bc.bootstrap_once(
            config, bc.request_body(config, tokens.current(), envoy_version, ca, workdir), ca
        )

    certificates = CertificateClient(
        config.cp_address, ca, config.mesh, config.name, tokens, config.dataplane_json
    )
    identity = _workload_identity(config, certificates, workdir, first_key)
    try:
        log.info("fetching bootstrap from %s for %s.%s", config.cp_address, config.mesh, config.name)
        bootstrap = await _unless_shutdown(fetch_and_write_bootstrap(), shutdown.requested)
        if bootstrap is not None and identity is not None:
            identity = await _unless_shutdown(_first_certificate(config, identity), shutdown.requested)
        if shutdown.requested.is_set() or bootstrap is None:
            log.info("stopped before Envoy was started")
            return
        address = admin_address_from_bootstrap(_parse_bootstrap(bootstrap))
        log.info("bootstrap written to %s; Envoy admin at %s", bootstrap_path, address.describe())
        admin = EnvoyAdmin(address)
        readiness.admin = admin
        try:
            await _run_with_identity(config, binary, bootstrap_path, admin, shutdown, tokens, identity,
                                     fetch_and_write_bootstrap, probe_token)  # fmt: skip
        finally:
            readiness.admin = None
            await admin.aclose()
    finally:
        if identity is not None:
            await identity.cancel_pregenerated()
        await certificates.aclose()


async def _run_with_identity(
    config: RunConfig,
    binary: Path,
    bootstrap_path: Path,
    admin: EnvoyAdmin,
    shutdown: Shutdown,
    tokens: TokenSource,
    identity: WorkloadIdentity | None,
    refresh_bootstrap: Callable[[], Awaitable[object]],
    probe_token: Callable[[], Awaitable[object]],
) -> None:
    """Envoy under supervision, with certificate renewal and token-file watching beside it, and an
    end (TokenRefused) when the CP closes ADS because it no longer accepts the token."""
    restart = asyncio.Event()
    rotation = TokenRotation(tokens, refresh_bootstrap, admin, restart.set)
    async with asyncio.TaskGroup() as side:
        side_tasks: list[asyncio.Task[None]] = []
        if tokens.path is not None:  # only a token file can change
            side_tasks += [
                side.create_task(tokens.watch(rotation.on_token_change)),
                side.create_task(rotation.refresh_on_change()),
                side.create_task(rotation.watch_ads()),
            ]
        if tokens.current():
            side_tasks.append(side.create_task(watch_token_refusal(admin, probe_token)))
        if identity is not None:
            side_tasks.append(side.create_task(identity.renew_forever()))
        if config.proxy_type == DEFAULT_PROXY_TYPE:  # the merged metrics endpoint (MeshMetric)
            metrics = run_metrics(bootstrap_path.parent, admin.address, config.metrics_app_timeout_s)
            side_tasks.append(side.create_task(metrics))
        try:
            await _run_envoy(
                config, binary, bootstrap_path, admin, shutdown, restart, rotation.envoy_starting
            )
        finally:
            for task in side_tasks:
                task.cancel()


def _workload_identity(
    config: RunConfig, certificates: CertificateClient, workdir: Path, first_key: EarlyKeygen | None
) -> WorkloadIdentity | None:
    """The identity to obtain, its first key already being made; None for zone proxies, which are
    not Dataplanes (the CP has no certificate for them)."""
    if config.proxy_type != DEFAULT_PROXY_TYPE:
        return None
    uris = spiffe_ids(config.mesh, config.dataplane_json)
    identity = WorkloadIdentity(certificates, IdentityPaths.in_workdir(workdir), uris)
    identity.pregenerate(first_key)
    return identity


async def _first_certificate(config: RunConfig, identity: WorkloadIdentity) -> WorkloadIdentity | None:
    """Key, CSR and SDS files before Envoy starts; None when the CP does not issue certificates."""
    try:
        await identity.obtain_at_start(config.retry_backoff_s, config.retry_max_duration_s)
    except NoCertificateEndpoint as exc:
        log.warning("%s: running without a workload identity (no mTLS for this proxy)", exc)
        return None
    return identity


async def _run_envoy(
    config: RunConfig,
    binary: Path,
    bootstrap_path: Path,
    admin: EnvoyAdmin,
    shutdown: Shutdown,
    restart: asyncio.Event,
    before_start: Callable[[], None],
) -> None:
    """Supervise Envoy until shutdown; a `restart` request drains and stops it, then starts it again."""
    launch = EnvoyLaunch(
        binary, bootstrap_path, config.drain_time_s, config.envoy_log_level, config.concurrency
    )
    policy = RestartPolicy(config.max_envoy_restarts, config.envoy_restart_window_s)

    async def on_stop(envoy: EnvoyProcess) -> None:
        await drain_and_stop(envoy, admin, config.drain_time_s, shutdown.forced)

    def start_hook() -> None:
        _remove_stale_socket(admin.address)
        before_start()

    while True:
        stop = asyncio.Event()
        relay = asyncio.ensure_future(_set_on_first(stop, shutdown.requested, restart))
        try:
            await supervise(launch, policy, stop, on_stop, start_hook)
        finally:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
        if shutdown.requested.is_set() or not restart.is_set():
            return
        restart.clear()
        log.info("starting Envoy again with the refreshed bootstrap")


async def _set_on_first(target: asyncio.Event, *sources: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(source.wait()) for source in sources]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        target.set()
    finally:
        for wait in waits:
            wait.cancel()


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
