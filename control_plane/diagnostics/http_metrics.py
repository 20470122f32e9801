"""Request latency of a Starlette app, as Kuma's go-http-metrics middleware records it.

Labels stay few whatever the traffic: `handler` is the route template that matched
(`/meshes/{mesh}/dataplanes/{name}`, never the path with its names), `code` the status class
(`2xx`, `4xx`, ...), `method` one of the HTTP methods or `other`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import Histogram
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "other"  # the handler label of a request no route matches (a 404 for any path)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def status_class(status: int) -> str:
    """200 → "2xx"; a status outside 100-599 (none sent: the app failed) → "5xx"."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "5xx"


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The path template of the route that served the request, as Starlette picks it (the first
    full match, else the first path match with another method: its 405), or UNMATCHED."""
    partial: BaseRoute | None = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return _path(route)
        if match is Match.PARTIAL and partial is None:
            partial = route
    return UNMATCHED if partial is None else _path(partial)


def _path(route: BaseRoute) -> str:
    return getattr(route, "path", "") or UNMATCHED


class RequestMetrics:
    """ASGI middleware: observe each HTTP request's duration in `histogram` (labels code, handler,
    method); `routes` are the app's, to name the handler."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], histogram: Histogram) -> None:
        self._app = app
        self._routes = routes
        self._histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 0

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self._app(scope, receive, record_status)
        finally:
            handler = route_template(self._routes, scope)
            labels = (status_class(status), handler, method_label(scope["method"]))
            self._histogram.labels(*labels).observe(time.perf_counter() - start)


def instrumented(app: Starlette, histogram: Histogram) -> RequestMetrics:
    """`app` with each request's duration observed in `histogram`."""
    return RequestMetrics(app, app.routes, histogram)
