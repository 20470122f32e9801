"""The diagnostics server (Kuma's port 5680): `/metrics`, `/ready`, `/healthy`.

`/metrics` is the control plane's own registry, in the Prometheus text format or OpenMetrics as
the scraper's Accept header asks. `/ready` answers 200 once `is_ready()` says every server is
serving, else 503; `/healthy` answers 200 while the process runs. It listens on every interface,
as Kuma's; nothing it serves is secret (see control_plane/diagnostics/metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger("kuma-cp.diagnostics")

ALL_INTERFACES = "0.0.0.0"


def create_diagnostics_app(registry: CollectorRegistry, is_ready: Callable[[], bool]) -> Starlette:
    async def metrics(request: Request) -> Response:
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        # Collecting reads every metric under its lock: quick, but off the loop all the same.
        body = await asyncio.to_thread(encode, registry)
        return Response(body, headers={"Content-Type": content_type})

    async def ready(request: Request) -> Response:
        return PlainTextResponse("", status_code=200 if is_ready() else 503)

    async def healthy(request: Request) -> Response:
        return PlainTextResponse("", status_code=200)

    return Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/healthy", healthy, methods=["GET"]),
        ]
    )


class DiagnosticsServer:
    """Serves until `stop()` (or cancelled); `started` once it listens."""

    def __init__(
        self,
        registry: CollectorRegistry,
        is_ready: Callable[[], bool],
        port: int,
        host: str = ALL_INTERFACES,
    ) -> None:
        self._server = uvicorn.Server(
            uvicorn.Config(
                create_diagnostics_app(registry, is_ready),
                host=host,
                port=port,
                log_level="warning",
                lifespan="off",
            )
        )
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the CLI owns signals

    @property
    def started(self) -> bool:
        return self._server.started

    async def run(self) -> None:
        await self._server.serve()
        if not self._server.should_exit:
            raise RuntimeError("the diagnostics server stopped")

    def stop(self) -> None:
        """Make `run` return (after closing the listener)."""
        self._server.should_exit = True
