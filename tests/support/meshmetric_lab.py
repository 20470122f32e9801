"""A lab for MeshMetric: real kuma-cp, a real `kuma-dp run` (real Envoy) for backend-1, its app
and a second process exposing the app's own Prometheus metrics; helpers to apply a MeshMetric and
to scrape the proxy's metrics port. Used by the tests and bench/metrics.py."""

from __future__ import annotations

import sys
from collections.abc import Callable

import httpx

from labkit.lab import AgentProc, ControlPlaneProc, Lab, dataplane
from labkit.ports import free_port, port_open
from labkit.waiting import wait_until

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
    def __init__(self, lab: Lab, cp: ControlPlaneProc, app_timeout_s: float = APP_TIMEOUT_S) -> None:
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
            KUMA_METRICS_APPLICATION_TIMEOUT=f"{app_timeout_s}s",
        )
        lab.wait_ready(self.agent)

    def apply(self, text: str) -> None:
        result = self.lab.kumactl(self.cp, "apply", "-f", "-", input=text)
        assert result.returncode == 0, result.stderr

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def scrape(self, accept: str = "*/*") -> httpx.Response:
        return httpx.get(self.metrics_url, headers={"accept": accept}, timeout=10)

    def scrape_until(self, check: Callable[[str], bool], timeout: float = 20) -> httpx.Response:
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
