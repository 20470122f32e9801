"""MeshMetric end to end: real kuma-cp, real `kuma-dp run` with real Envoy, an app with its own
Prometheus metrics; scrapes of the proxy's metrics port as Prometheus makes them."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from kuma_dp.metrics.exposition import parse
from labkit.lab import ControlPlaneProc, Lab
from tests.support.meshmetric_lab import APP_TIMEOUT_S, PROMETHEUS_ACCEPT, MetricsLab, mesh_metric, series
from tests.support.metrics_app import APP_COUNTER, APP_GAUGE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def mlab(lab: Lab, cp: ControlPlaneProc) -> MetricsLab:
    return MetricsLab(lab, cp)


def test_scrape_serves_envoy_and_app_series(mlab: MetricsLab) -> None:
    mlab.traffic()
    mlab.apply(mesh_metric(mlab.metrics_port, [("demo", mlab.app_metrics_port)]))
    body = mlab.scrape_until(
        lambda text: APP_COUNTER in text and "envoy_cluster_upstream_rq_total" in text
    ).text
    assert any(
        line.endswith(" 7.0") and 'kuma_application="demo"' in line for line in series(body, APP_COUNTER)
    )
    assert series(body, APP_GAUGE)
    rq = series(body, "envoy_cluster_upstream_rq_total")
    assert any(int(float(line.rsplit(" ", 1)[1])) >= 5 for line in rq), rq
    # Prometheus' own Accept header: OpenMetrics back, with its terminator.
    response = mlab.scrape(PROMETHEUS_ACCEPT)
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    parse(response.text, response.headers["content-type"])  # one valid document (a strict parser)
    assert series(response.text, APP_COUNTER) and series(response.text, "envoy_cluster_upstream_rq_total")
    # Another path on the metrics port is not the agent's.
    assert httpx.get(f"http://127.0.0.1:{mlab.metrics_port}/other", timeout=5).status_code == 404


def test_dead_or_hanging_app_costs_at_most_the_timeout(mlab: MetricsLab) -> None:
    hanging = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(16)
    try:
        apps = [("demo", mlab.app_metrics_port), ("hang", hanging.getsockname()[1])]
        mlab.apply(mesh_metric(mlab.metrics_port, apps))
        mlab.scrape_until(lambda text: APP_COUNTER in text)
        mlab.app.stop()
        started = time.monotonic()
        response = mlab.scrape()
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert series(response.text, "envoy_server_live")
        assert APP_COUNTER not in response.text
        assert elapsed < APP_TIMEOUT_S + 3  # bounded by the timeout, not by the hanging app
    finally:
        hanging.close()


def test_include_unused_and_exclude_change_what_is_served(mlab: MetricsLab) -> None:
    mlab.traffic()
    unused = "envoy_cluster_upstream_cx_overflow"  # Basic profile; never incremented here
    mlab.apply(mesh_metric(mlab.metrics_port, []))
    body = mlab.scrape_until(lambda text: "envoy_cluster_upstream_rq_total" in text).text
    assert not series(body, unused)
    mlab.apply(mesh_metric(mlab.metrics_port, [], "{includeUnused: true}"))
    mlab.scrape_until(lambda text: bool(series(text, unused)))
    exclude = "{profiles: {exclude: [{type: Prefix, match: envoy_cluster_upstream_rq}]}}"
    mlab.apply(mesh_metric(mlab.metrics_port, [], exclude))
    body = mlab.scrape_until(lambda text: "envoy_cluster_upstream_rq_total" not in text).text
    assert series(body, "envoy_cluster_upstream_cx_total")
