"""The running control plane: store, REST API, DP server and xDS, owned by one task group."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from dataclasses import dataclass

import uvicorn

from control_plane.api.app import create_app
from control_plane.config import CpConfig
from control_plane.diagnostics.http_metrics import instrumented
from control_plane.diagnostics.metrics import CpMetrics
from control_plane.diagnostics.server import ALL_INTERFACES, DiagnosticsServer
from control_plane.dns.allocator import VipAllocator
from control_plane.dp_server.authn import DpAuthenticator
from control_plane.dp_server.bootstrap_api import BootstrapSettings
from control_plane.dp_server.http_app import create_dp_http_app, limited
from control_plane.dp_server.server import DpServer
from control_plane.dp_server.stream_reverify import StreamReverifier
from control_plane.dp_server.tls import TlsConfigError, TlsFiles, resolve_tls_files
from control_plane.http_limits import BodyLimit
from control_plane.monitoring.server import create_monitoring_app
from control_plane.store.base import ResourceStore
from control_plane.store.defaults import ensure_default_mesh
from control_plane.store.factory import open_store
from control_plane.store.metered import MeteredStore
from control_plane.xds.component import StreamWatcher, XdsComponent

log = logging.getLogger("kuma-cp")


class RuntimeStartError(Exception):
    """A configuration or environment problem found before serving; the message says what to do."""


@dataclass
class ControlPlane:
    config: CpConfig
    store: ResourceStore
    tls: TlsFiles
    metrics: CpMetrics

    @classmethod
    def open(cls, config: CpConfig) -> ControlPlane:
        _check_ports_free(config)
        metrics = CpMetrics()
        try:
            store: ResourceStore = MeteredStore(open_store(config), metrics)
        except Exception as exc:  # the factory's errors name the store and path
            raise RuntimeStartError(f"cannot open the store: {exc}") from None
        try:
            tls = resolve_tls_files(
                config.general.work_dir, config.general.tls_cert_file, config.general.tls_key_file
            )
        except TlsConfigError as exc:
            store.close()
            raise RuntimeStartError(str(exc)) from None
        if not config.defaults.skip_mesh_creation:
            ensure_default_mesh(store)
        if config.dp_server.dp_proxy_authn == "none":
            log.warning(
                "dataplane authentication is off (KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE=none): any "
                "client of the DP server gets config and certificates"
            )
        return cls(config, store, tls, metrics)

    async def run(self) -> None:
        cfg = self.config
        authn = DpAuthenticator(self.store, cfg.dp_server.dp_proxy_authn)
        xds = XdsComponent(
            self.store,
            deregistration_delay_s=cfg.xds.dataplane_deregistration_delay,
            authenticate=authn.authenticate_stream if authn.enabled else None,
            watch_stream=_stream_reverifier(self.store, authn, cfg.xds.token_reverify_interval),
            dns=cfg.dns_server,
            metrics=self.metrics,
            limits=cfg.dp_server.xds_limits,
        )
        bootstrap = BootstrapSettings(dp_server_port=cfg.dp_server.port)
        http_app = create_dp_http_app(self.store, bootstrap, authn, self.metrics)
        dp_http = instrumented(http_app, self.metrics.dp_server_http_request_duration_seconds)
        limits = cfg.dp_server.limits
        dp_http = limited(dp_http, limits.max_request_body_bytes, limits.read_timeout)
        dp_server = DpServer(
            self.tls,
            cfg.dp_server.port,
            dp_http,
            xds.register,
            limits=limits,
            xds_limits=cfg.dp_server.xds_limits,
        )
        xds.ads.disconnect = dp_server.disconnect
        admin = cfg.api_server.localhost_is_admin
        api_app = create_app(self.store, localhost_is_admin=admin, dns=cfg.dns_server)
        api = uvicorn.Server(
            uvicorn.Config(
                BodyLimit(
                    instrumented(api_app, self.metrics.api_server_http_request_duration_seconds),
                    cfg.api_server.max_request_body_bytes,
                    "KUMA_API_SERVER_MAX_REQUEST_BODY_BYTES",
                ),
                host=cfg.api_server.http_interface,
                port=cfg.api_server.http_port,
                log_level="warning",
                lifespan="off",
            )
        )
        api.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the CLI owns signals
        # Ready once every server serves (the store is open: this object exists only then).
        diagnostics = DiagnosticsServer(
            self.metrics.registry,
            lambda: dp_server.started.is_set() and api.started,
            cfg.diagnostics.server_port,
        )
        monitoring = _monitoring_server(self.store, cfg)
        log.info(
            "kuma-cp: API on :%d, DP server on :%d (CA for agents: %s), diagnostics on :%d, store %s",
            cfg.api_server.http_port,
            cfg.dp_server.port,
            self.tls.cert_file,
            cfg.diagnostics.server_port,
            cfg.store.type,
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(diagnostics.run())  # first: /ready says 503 until the rest serves
                group.create_task(xds.run())
                group.create_task(VipAllocator(self.store, cfg.dns_server).run())
                group.create_task(dp_server.run())
                group.create_task(_serve_api(api))
                if monitoring is not None:
                    group.create_task(_serve_api(monitoring))
        finally:
            api.should_exit = True
            diagnostics.stop()
            if monitoring is not None:
                monitoring.should_exit = True

    def close(self) -> None:
        self.store.close()


def _stream_reverifier(
    store: ResourceStore, authn: DpAuthenticator, interval_s: float
) -> StreamWatcher | None:
    """Open ADS streams' tokens checked again every interval (None when authentication is off)."""
    return StreamReverifier(store, authn, interval_s).watch if authn.enabled else None


def _monitoring_server(store: ResourceStore, cfg: CpConfig) -> uvicorn.Server | None:
    """Prometheus discovery on KUMA_MONITORING_ASSIGNMENT_SERVER_PORT (5676), all interfaces (Kuma)."""
    if not cfg.monitoring.enabled:
        return None
    app = create_monitoring_app(store)
    server = uvicorn.Server(
        uvicorn.Config(app, host="0.0.0.0", port=cfg.monitoring.port, log_level="warning", lifespan="off")
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    return server


async def _serve_api(api: uvicorn.Server) -> None:
    await api.serve()
    if not api.should_exit:
        raise RuntimeError("the API server stopped")


def _check_ports_free(config: CpConfig) -> None:
    """Fail before anything starts, naming the variable to change, instead of half-running."""
    for var, host, port in (
        ("KUMA_API_SERVER_HTTP_PORT", config.api_server.http_interface, config.api_server.http_port),
        ("KUMA_DP_SERVER_PORT", "0.0.0.0", config.dp_server.port),
        ("KUMA_DIAGNOSTICS_SERVER_PORT", ALL_INTERFACES, config.diagnostics.server_port),
        *(
            [("KUMA_MONITORING_ASSIGNMENT_SERVER_PORT", "0.0.0.0", config.monitoring.port)]
            if config.monitoring.enabled
            else []
        ),
    ):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise RuntimeStartError(
                        f"port {port} is already in use (another kuma-cp?); free it or set {var}"
                    ) from None
                raise RuntimeStartError(f"cannot listen on {host}:{port} ({var}): {exc.strerror}") from None
