"""The DP server's HTTP side: `/bootstrap` and `POST /certificate` in one app, one authenticator."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from control_plane.diagnostics.metrics import CpMetrics
from control_plane.dp_server.authn import DpAuthenticator
from control_plane.dp_server.bootstrap_api import BootstrapSettings, create_bootstrap_app
from control_plane.dp_server.identity_api import certificate_routes
from control_plane.dp_server.recent_dataplanes import RecentDataplanes
from control_plane.http_limits import BodyLimit
from control_plane.store.base import ResourceStore


def create_dp_http_app(
    store: ResourceStore,
    settings: BootstrapSettings,
    authenticator: DpAuthenticator,
    metrics: CpMetrics | None = None,
) -> Starlette:
    recent = RecentDataplanes()
    bootstrap = create_bootstrap_app(store, settings, authenticator, recent)
    certificates = certificate_routes(store, authenticator, recent, metrics or CpMetrics())
    return Starlette(
        routes=[*bootstrap.routes, *certificates], exception_handlers={HTTPException: _http_error}
    )


def limited(app: ASGIApp, max_body_bytes: int, read_timeout: float) -> ASGIApp:
    """The app behind the DP server's request body bounds (413, 408)."""
    hint = "the limit is set by KUMA_DP_SERVER_MAX_REQUEST_BODY_BYTES"
    return BodyLimit(app, max_body_bytes, hint, read_timeout)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (404, 405, and the body bounds' 413/408) in the DP server's shape."""
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"title": exc.detail, "details": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )
