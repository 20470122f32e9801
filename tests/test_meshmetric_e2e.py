"""MeshMetric end to end: real kuma-cp, real `kuma-dp run` with real Envoy, an app with its own
Prometheus metrics; scrapes of the proxy's metrics port as Prometheus makes them."""

from __future__ import annotations

import socket
import sys
import time

import httpx
import pytest

from labkit.lab import AgentProc, ControlPlaneProc, Lab, dataplane
from labkit.ports import free_port, port_open
from labkit.waiting import wait_until
from tests.support.metrics_app import APP_COUNTER, APP_GAUGE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

APP_TIMEOUT_S = 1.0  # the agent's KUMA_METRICS_APPLICATION_TIMEOUT here
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def mesh_metric(port: int, apps: list[tuple[str, int]], sidecar: str = "{}") -> str:
    applications = "".join(f"\n    - {{name: {n}, port: {p}, path: /metrics}}" for n, p in apps) or " []"
    return f"""type: MeshMetric
mesh: default
name: metrics-default
spec:
  targetRef: {{kind: Mesh}}
  default:
    sidecar: {sidecar}
    applications:{applications}
    backends:
    - type: Prometheus
      prometheus: {{port: {port}, path: /metrics}}
"""


class MetricsLab:
    def __init__(self, lab: Lab, cp: ControlPlaneProc) -> None:
        self.lab, self.cp = lab, cp
        self.metrics_port, self.app_metrics_port = free_port(), free_port()
        self.app = lab.spawn(
            "metrics-app", [sys.executable, "-m", "tests.support.metrics_app", str(self.app_metrics_port)]
        )
        wait_until(lambda: port_open(self.app_metrics_port), timeout=10)
        app_port, self.inbound = free_port(), free_port()
        lab.start_app("backend", "backend-1", app_port)
        self.agent: AgentProc = lab.start_agent(
            cp,
            dataplane("backend-1", "backend", self.inbound, app_port),
            KUMA_METRICS_APPLICATION_TIMEOUT=f"{APP_TIMEOUT_S}s",
        )
        lab.wait_ready(self.agent)

    def apply(self, text: str) -> None:
        result = self.lab.kumactl(self.cp, "apply", "-f", "-", input=text)
        assert result.returncode == 0, result.stderr

    def scrape(self, accept: str = "*/*") -> httpx.Response:
        return httpx.get(
            f"http://127.0.0.1:{self.metrics_port}/metrics", headers={"accept": accept}, timeout=10
        )

    def scrape_until(self, check, timeout: float = 20) -> httpx.Response:
        """Scrapes until `check(body)` holds (the policy reached Envoy and the agent)."""
        last: list[httpx.Response] = []

        def ok() -> bool:
            try:
                last[:] = [self.scrape()]
            except httpx.HTTPError:
                return False
            return last[0].status_code == 200 and check(last[0].text)

        wait_until(ok, timeout=timeout, interval=0.2)
        return last[0]

    def traffic(self, n: int = 5) -> None:
        for _ in range(n):
            assert httpx.get(f"http://127.0.0.1:{self.inbound}/", timeout=5).status_code == 200


def series(body: str, name: str) -> list[str]:
    return [line for line in body.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


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
