"""The running control plane: store, REST API, DP server and xDS, owned by one task group."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from control_plane.api.app import create_app
from control_plane.api.bodies import MAX_BODY_BYTES
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
from control_plane.instances import Instances, new_instance_id
from control_plane.leader import LeaderElection
from control_plane.monitoring.server import create_monitoring_app
from control_plane.resources.manager import ResourceManager
from control_plane.store.base import ResourceStore
from control_plane.store.defaults import ensure_default_mesh
from control_plane.store.factory import open_store
from control_plane.store.metered import MeteredStore
from control_plane.tokens.user import ADMIN_USER_TOKEN, bootstrap_admin_token
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
            store: ResourceStore = ResourceManager(MeteredStore(open_store(config), metrics))
        except Exception as exc:  # the factory's errors name the store and path
            raise RuntimeStartError(f"cannot open the store: {exc}") from None
        try:
            tls = resolve_tls_files(
                config.general.work_dir, config.general.tls_cert_file, config.general.tls_key_file
            )
        except TlsConfigError as exc:
            store.close()
            raise RuntimeStartError(str(exc)) from None
        api = config.api_server
        if api.https_enabled and api.https_tls_cert_file and api.https_tls_key_file:
            for var, path in (
                ("KUMA_API_SERVER_HTTPS_TLS_CERT_FILE", api.https_tls_cert_file),
                ("KUMA_API_SERVER_HTTPS_TLS_KEY_FILE", api.https_tls_key_file),
            ):
                if not os.access(path, os.R_OK):
                    store.close()
                    raise RuntimeStartError(f"{var}={path}: file does not exist or is not readable")
        if not config.defaults.skip_mesh_creation:
            ensure_default_mesh(store)
        _bootstrap_admin_token(store, config)
        if config.dp_server.dp_proxy_authn == "none":
            log.warning(
                "dataplane authentication is off (KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE=none): any "
                "client of the DP server gets config and certificates"
            )
        return cls(config, store, tls, metrics)

    async def run(self) -> None:
        cfg = self.config
        authn = DpAuthenticator(self.store, cfg.dp_server.dp_proxy_authn)
        instances = Instances(self.store, new_instance_id())
        xds = XdsComponent(
            self.store,
            deregistration_delay_s=cfg.xds.dataplane_deregistration_delay,
            authenticate=authn.authenticate_stream if authn.enabled else None,
            watch_stream=_stream_reverifier(self.store, authn, cfg.xds.token_reverify_interval),
            dns=cfg.dns_server,
            metrics=self.metrics,
            limits=cfg.dp_server.xds_limits,
            instances=instances,
            run_leader_jobs=False,
        )
        leader = LeaderElection(
            self.store.leader_lock(),
            [
                ("deregistration", xds.deregistration.run),
                ("vip-allocation", VipAllocator(self.store, cfg.dns_server).run),
                ("forget-instances", instances.forget_stale),
            ],
            instances.instance_id,
            on_change=self.metrics.leader.set,
        )
        bootstrap = BootstrapSettings(
            dp_server_port=cfg.dp_server.port,
            xds_host=cfg.dp_server.xds_host,
            xds_port=cfg.dp_server.xds_port,
        )
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
        api_app = create_app(
            self.store,
            localhost_is_admin=admin,
            user_tokens=cfg.api_server.authn_type == "tokens",
            token_issuer=cfg.api_server.token_issuer,
            dns=cfg.dns_server,
        )
        api = uvicorn.Server(
            uvicorn.Config(
                # The API reads bodies up to MAX_BODY_BYTES itself; this refuses a declared larger
                # one before reading it, with a 413 the client sees (the rest is drained).
                BodyLimit(
                    instrumented(api_app, self.metrics.api_server_http_request_duration_seconds),
                    MAX_BODY_BYTES,
                    "limit: max body size",
                ),
                host=cfg.api_server.http_interface,
                port=cfg.api_server.http_port,
                log_level="warning",
                lifespan="off",
            )
        )
        api.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the CLI owns signals
        api_https = self._https_api(api.config.app)
        # Ready once every server serves (the store is open: this object exists only then).
        diagnostics = DiagnosticsServer(
            self.metrics.registry,
            lambda: dp_server.started.is_set() and api.started and (api_https is None or api_https.started),
            cfg.diagnostics.server_port,
        )
        monitoring = _monitoring_server(self.store, cfg)
        log.info(
            "kuma-cp: API on %s:%d (HTTPS: %s), DP server on :%d (CA for agents: %s), diagnostics on :%d, "
            "store %s, instance %s",
            cfg.api_server.http_interface,
            cfg.api_server.http_port,
            f"{cfg.api_server.https_interface}:{cfg.api_server.https_port}" if api_https else "off",
            cfg.dp_server.port,
            self.tls.cert_file,
            cfg.diagnostics.server_port,
            cfg.store.type,
            instances.instance_id,
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(diagnostics.run())  # first: /ready says 503 until the rest serves
                group.create_task(xds.run())
                group.create_task(instances.run_heartbeat())
                group.create_task(leader.run())
                group.create_task(dp_server.run())
                group.create_task(_serve_api(api))
                if api_https is not None:
                    group.create_task(_serve_api(api_https))
                if monitoring is not None:
                    group.create_task(_serve_api(monitoring))
        finally:
            api.should_exit = True
            if api_https is not None:
                api_https.should_exit = True
            diagnostics.stop()
            if monitoring is not None:
                monitoring.should_exit = True

    def close(self) -> None:
        self.store.close()

    def _https_api(self, app: ASGIApp) -> uvicorn.Server | None:
        """The same API over TLS on KUMA_API_SERVER_HTTPS_PORT (5682), as Kuma: its own pair if
        given, else the control plane's general TLS pair (the DP server's, autogenerated if unset)."""
        api = self.config.api_server
        if not api.https_enabled:
            return None
        cert = api.https_tls_cert_file or str(self.tls.cert_file)
        key = api.https_tls_key_file or str(self.tls.key_file)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=api.https_interface,
                port=api.https_port,
                ssl_certfile=cert,
                ssl_keyfile=key,
                log_level="warning",
                lifespan="off",
            )
        )
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        return server


def _bootstrap_admin_token(store: ResourceStore, config: CpConfig) -> None:
    """Kuma's first start: an admin user token in the global secret admin-user-token (never logged)."""
    api = config.api_server
    if api.authn_type != "tokens" or not api.bootstrap_admin_token:
        return
    try:
        created = bootstrap_admin_token(store)
    except Exception as exc:  # as Kuma: the control plane runs on; admins still have localhost
        log.error("could not create the admin user token: %s", exc)
        return
    if created:
        log.info("admin user token created (global secret %s)", ADMIN_USER_TOKEN)
    log.info(
        "bootstrap of the admin user token is enabled. To read it (as an admin, e.g. from this host): "
        "curl http://localhost:%d/global-secrets/%s | jq -r .data | base64 -d ; configure kumactl with "
        "kumactl config control-planes add --auth-type=tokens --auth-conf token=YOUR_TOKEN. To disable "
        "it set KUMA_API_SERVER_AUTHN_TOKENS_BOOTSTRAP_ADMIN_TOKEN to false.",
        api.http_port,
        ADMIN_USER_TOKEN,
    )


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
    listeners = _listeners(config)
    seen: dict[int, str] = {}
    for var, _host, port in listeners:
        if port in seen:  # each probe alone would pass, and one server would then fail to bind
            raise RuntimeStartError(f"{seen[port]} and {var} are both {port}: give each server its own port")
        seen[port] = var
    for var, host, port in listeners:
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


def _listeners(config: CpConfig) -> list[tuple[str, str, int]]:
    """(variable, interface, port) of every server this configuration starts."""
    return [
        ("KUMA_API_SERVER_HTTP_PORT", config.api_server.http_interface, config.api_server.http_port),
        ("KUMA_DP_SERVER_PORT", "0.0.0.0", config.dp_server.port),
        ("KUMA_DIAGNOSTICS_SERVER_PORT", ALL_INTERFACES, config.diagnostics.server_port),
        *(
            [("KUMA_MONITORING_ASSIGNMENT_SERVER_PORT", "0.0.0.0", config.monitoring.port)]
            if config.monitoring.enabled
            else []
        ),
        *(
            [("KUMA_API_SERVER_HTTPS_PORT", config.api_server.https_interface, config.api_server.https_port)]
            if config.api_server.https_enabled
            else []
        ),
    ]
