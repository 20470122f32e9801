"""The DP server's HTTP side: `/bootstrap` and `POST /certificate` in one app, one authenticator."""

from __future__ import annotations

from starlette.applications import Starlette

from control_plane.diagnostics.metrics import CpMetrics
from control_plane.dp_server.authn import DpAuthenticator
from control_plane.dp_server.bootstrap_api import BootstrapSettings, create_bootstrap_app
from control_plane.dp_server.identity_api import certificate_routes
from control_plane.dp_server.recent_dataplanes import RecentDataplanes
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
    return Starlette(routes=[*bootstrap.routes, *certificates])
