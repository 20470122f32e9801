"""The DP server component: TLS front on one port, bootstrap HTTP app and ADS gRPC behind it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc
import uvicorn
from starlette.types import ASGIApp

from control_plane.config import DpServerLimits, XdsServerLimits
from control_plane.dp_server.front import Backends, TlsFront, server_ssl_context
from control_plane.dp_server.tls import TlsFiles

log = logging.getLogger("kuma-cp.dp-server")


class DpServer:
    """Runs until cancelled. `register_grpc` adds services (ADS) to the gRPC server before start."""

    def __init__(
        self,
        tls: TlsFiles,
        port: int,
        http_app: ASGIApp,
        register_grpc: Callable[[grpc.aio.Server], None],
        host: str | None = None,
        limits: DpServerLimits | None = None,
        xds_limits: XdsServerLimits | None = None,
        http_max_requests: int | None = None,  # uvicorn's limit_max_requests: None in production
    ) -> None:
        self._http_max_requests = http_max_requests
        self._tls = tls
        self._limits = limits or DpServerLimits()
        self._xds_limits = xds_limits or XdsServerLimits()
        self._port = port
        self._host = host
        self._http_app = http_app
        self._register_grpc = register_grpc
        self.started = asyncio.Event()
        self._front: TlsFront | None = None

    def disconnect(self, peer: str) -> bool:
        """Close the client connection behind a gRPC call's `peer` (e.g. an ADS client that does
        not read its responses); False if there is none."""
        return self._front is not None and self._front.close_peer(peer)

    async def run(self) -> None:
        with tempfile.TemporaryDirectory(prefix="kuma-cp-dp-") as tmp:
            backends = Backends(Path(tmp) / "grpc.sock", Path(tmp) / "http.sock")
            grpc_server = grpc.aio.server(
                options=[
                    ("grpc.keepalive_time_ms", 30_000),
                    ("grpc.http2.max_pings_without_data", 0),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                    ("grpc.max_receive_message_length", self._xds_limits.max_receive_message_bytes),
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.max_concurrent_streams", self._xds_limits.max_streams_per_connection),
                ]
            )
            self._register_grpc(grpc_server)
            grpc_server.add_insecure_port(f"unix:{backends.grpc_socket}")
            await grpc_server.start()
            http = uvicorn.Server(
                uvicorn.Config(
                    self._http_app,
                    uds=str(backends.http_socket),
                    log_level="warning",
                    lifespan="off",
                    limit_max_requests=self._http_max_requests,
                )
            )
            http_task = asyncio.create_task(http.serve(), name="dp-server-http")
            ssl_context = server_ssl_context(self._tls.cert_file, self._tls.key_file)
            front = TlsFront(backends, ssl_context, self._limits)
            self._front = front
            front_task: asyncio.Task[None] | None = None
            try:
                await _wait_for_socket(backends.http_socket, http_task)
                log.info("DP server (bootstrap, certificates, ADS) listening on :%d (TLS)", self._port)
                front_task = asyncio.create_task(front.serve(self._host, self._port, self.started))
                await _until_one_ends(http_task, front_task)
            finally:
                if front_task is not None:
                    front_task.cancel()
                    await asyncio.gather(front_task, return_exceptions=True)
                http.should_exit = True
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(http_task, 5)
                await grpc_server.stop(grace=1)


async def _until_one_ends(http_task: asyncio.Task[None], front_task: asyncio.Task[None]) -> None:
    """Both serve until cancelled: either ending is an error that must stop the control plane
    (the caller's TaskGroup), not leave a DP server that accepts TLS but never answers."""
    done, _ = await asyncio.wait({http_task, front_task}, return_when=asyncio.FIRST_COMPLETED)
    task, what = (
        (http_task, "its HTTP server (bootstrap, certificates)")
        if http_task in done
        else (front_task, "its TLS listener")
    )
    error = task.exception()
    reason = f": {type(error).__name__}: {error}" if error is not None else ""
    raise RuntimeError(f"the DP server stopped serving: {what} ended{reason}") from error


async def _wait_for_socket(path: Path, task: asyncio.Task[None]) -> None:
    while not path.exists():
        if task.done():
            task.result()
            raise RuntimeError("the bootstrap HTTP server stopped before it started")
        await asyncio.sleep(0.01)
