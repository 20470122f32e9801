"""Section: the merged metrics endpoint (MeshMetric). Scrapes of a proxy's metrics port (Envoy's
stats, filtered by Kuma's Basic profile, merged by the agent with its application's own metrics)
against scrapes of Envoy's own `/stats/prometheus` (its admin socket), same run, alternating, while
the proxy carries a fixed rate of traffic (`hey`, 1,000 req/s in the full and quick profiles).
Scrapes are paced (every 100 ms, one kind after the other) and timed one by one; merged scrapes are
made with Prometheus' own Accept header (OpenMetrics back) and with a plain one (Prometheus text).
The agent's CPU (its own process, not Envoy) is measured over a load window without scrapes and
over the window with them.

Run alone: `.venv/bin/python -m bench.metrics [--profile quick]`.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from bench.common import Measure, Profile
from bench.load import run_fixed_rate
from bench.report import run_alone

SECTION = "metrics"
SCRAPE_PERIOD_S = 0.1
APP_TIMEOUT_S = 2.0
KINDS = ("openmetrics", "text", "envoy")
BASELINE = "Envoy's own /stats/prometheus (admin socket)"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class _AgentCpu:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def seconds(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system


def _timed(call: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    response = call()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"scrape answered {response.status_code}: {response.text[:200]}")
    return elapsed


def measure(profile: Profile) -> list[Measure]:
    from labkit.lab import Lab  # noqa: PLC0415 - test-support imports, only when measuring
    from tests.support.meshmetric_lab import PROMETHEUS_ACCEPT, MetricsLab, mesh_metric  # noqa: PLC0415
    from tests.support.metrics_app import APP_COUNTER  # noqa: PLC0415

    seconds = profile.load_seconds
    latencies: dict[str, list[float]] = {k: [] for k in KINDS}
    cpu_idle: list[float] = []  # agent CPU % under load, not scraped
    cpu_scraped: list[float] = []  # agent CPU % under load, scraped
    cpu_per_scrape: list[float] = []  # agent CPU ms per merged scrape (above the unscraped rate)
    with tempfile.TemporaryDirectory(prefix="kuma-bench-metrics-") as tmp:
        lab = Lab(Path(tmp))
        try:
            cp = lab.start_control_plane()
            lab.wait_control_plane(cp)
            mlab = MetricsLab(lab, cp, app_timeout_s=APP_TIMEOUT_S)
            mlab.apply(mesh_metric(mlab.metrics_port, [("demo", mlab.app_metrics_port)]))
            mlab.traffic()
            mlab.scrape_until(lambda text: APP_COUNTER in text and "envoy_cluster_upstream_rq" in text)
            cpu = _AgentCpu(mlab.agent.proc.popen.pid)
            url = f"http://127.0.0.1:{mlab.inbound}/"
            merged = httpx.Client(timeout=10)
            admin = mlab.agent.envoy_admin()
            scrapes: dict[str, Callable[[], httpx.Response]] = {
                "openmetrics": lambda: merged.get(mlab.metrics_url, headers={"accept": PROMETHEUS_ACCEPT}),
                "text": lambda: merged.get(mlab.metrics_url, headers={"accept": "*/*"}),
                "envoy": lambda: admin.get("/stats/prometheus"),
            }
            for _ in range(profile.repetitions):
                idle_pct = _under_load(url, profile, seconds, cpu, None)
                cpu_idle.append(idle_pct)
                done: dict[str, list[float]] = {k: [] for k in KINDS}

                def scrape_all(done: dict[str, list[float]] = done) -> None:
                    for kind in KINDS:
                        done[kind].append(_timed(scrapes[kind]))

                scraped_pct = _under_load(url, profile, seconds, cpu, scrape_all)
                cpu_scraped.append(scraped_pct)
                for kind in KINDS:
                    latencies[kind].extend(done[kind])
                merged_scrapes = len(done["openmetrics"]) + len(done["text"])
                extra_cpu_s = (scraped_pct - idle_pct) / 100 * seconds
                cpu_per_scrape.append(max(0.0, extra_cpu_s * 1000 / max(1, merged_scrapes)))
            merged.close()
            admin.close()
        finally:
            lab.close()
    return _measures(profile, latencies, cpu_idle, cpu_scraped, cpu_per_scrape)


def _under_load(
    url: str, profile: Profile, seconds: float, cpu: _AgentCpu, scrape: Callable[[], None] | None
) -> float:
    """Agent CPU % over a fixed-rate load window, scraping every SCRAPE_PERIOD_S when asked."""
    load = threading.Thread(target=run_fixed_rate, args=(url, profile.fixed_rate, seconds))
    started, cpu_before = time.monotonic(), cpu.seconds()
    load.start()
    while load.is_alive():
        if scrape is not None:
            scrape()
        time.sleep(SCRAPE_PERIOD_S)
    load.join()
    return (cpu.seconds() - cpu_before) / (time.monotonic() - started) * 100


def _measures(
    profile: Profile,
    latencies: dict[str, list[float]],
    cpu_idle: list[float],
    cpu_scraped: list[float],
    cpu_per_scrape: list[float],
) -> list[Measure]:
    rate = f"at {profile.fixed_rate} req/s"
    names = {
        "openmetrics": "merged scrape, OpenMetrics (Prometheus' Accept)",
        "text": "merged scrape, Prometheus text",
    }
    found = []
    for pick, q in (("p50", 0.5), ("p99", 0.99)):
        for kind in ("openmetrics", "text"):
            found.append(
                Measure(
                    SECTION,
                    f"{pick} {names[kind]} {rate}",
                    "ms",
                    [_percentile(latencies[kind], q)],
                    BASELINE,
                    [_percentile(latencies["envoy"], q)],
                    note=f"{len(latencies[kind])} scrapes",
                )  # fmt: skip
            )
    found.append(
        Measure(
            SECTION,
            f"agent CPU {rate}, scraped every {SCRAPE_PERIOD_S * 1000:g} ms (3 kinds)",
            "%",
            cpu_scraped,
            "the same, not scraped",
            cpu_idle,
            note="the agent process only",
        )  # fmt: skip
    )
    found.append(
        Measure(
            SECTION,
            "agent CPU per merged scrape",
            "ms",
            cpu_per_scrape,
            note=f"median of {len(cpu_per_scrape)} windows; {statistics.median(cpu_idle):.1f} % unscraped",
        )  # fmt: skip
    )
    return found


if __name__ == "__main__":
    run_alone(measure, __doc__ or "")
