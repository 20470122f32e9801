"""A stock Prometheus finds the proxies through the control plane and scrapes their merged
metrics: real kuma-cp, real `kuma-dp run` with real Envoy, an app with its own metrics, and
Debian's real Prometheus, configured with nothing but the control plane's discovery address."""

from __future__ import annotations

import pytest

from labkit.lab import Lab
from labkit.ports import free_port
from labkit.waiting import wait_until
from tests.support.meshmetric_lab import MetricsLab, mesh_metric
from tests.support.metrics_app import APP_COUNTER
from tests.support.prometheus import Prometheus

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]


def test_prometheus_discovers_and_scrapes_the_proxy(lab: Lab) -> None:
    mads_port = free_port()
    cp = lab.start_control_plane(KUMA_MONITORING_ASSIGNMENT_SERVER_PORT=str(mads_port))
    lab.wait_control_plane(cp)
    mlab = MetricsLab(lab, cp)
    mlab.apply(mesh_metric(mlab.metrics_port, [("demo", mlab.app_metrics_port)]))
    mlab.traffic(10)
    # (Debian's Prometheus 2.42 is built without kuma_sd_configs: the MADS protocol is tested apart.)
    sd = {"http_sd_configs": [{"url": f"http://127.0.0.1:{mads_port}/http_sd", "refresh_interval": "1s"}]}
    prometheus = Prometheus(lab, {"job_name": "kuma-dataplanes", **sd})

    def up() -> dict | None:
        targets = [t for t in prometheus.active_targets() if t["health"] == "up"]
        return targets[0] if targets else None

    wait_until(lambda: up() is not None, timeout=40, interval=0.5)
    target = up()
    assert target is not None
    assert target["scrapeUrl"] == f"http://127.0.0.1:{mlab.metrics_port}/metrics"
    labels = target["labels"]
    assert {k: labels[k] for k in ("mesh", "dataplane", "service")} == {
        "mesh": "default",
        "dataplane": "backend-1",
        "service": "backend",
    }

    def stored(expr: str) -> list[dict]:
        result = prometheus.query(expr)
        return result if result else []

    wait_until(lambda: stored("sum(envoy_cluster_upstream_rq_total) >= 10"), timeout=30, interval=0.5)
    app = []
    wait_until(lambda: bool(app.extend(stored(APP_COUNTER)) or app), timeout=30, interval=0.5)
    assert app[0]["metric"]["kuma_application"] == "demo"
    assert float(app[0]["value"][1]) == 7.0
    assert stored('up{job="kuma-dataplanes"} == 1')
