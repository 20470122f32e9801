"""Sections 2 and 4: the data path through two proxies with mTLS, and the agent's footprint.

Each repetition loads the three ways of bench/twoproxy.py in turn (the order rotates, so drift
in the machine's load does not favour one): `hey` at a fixed rate (latency), then `wrk` to
saturation (throughput). While our mesh carries the fixed rate, the web agent's CPU and RSS are
sampled (the agent process only; its Envoy is reported beside it); an idle window comes first.

Run alone: `.venv/bin/python -m bench.datapath [--profile quick]`.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

from bench import twoproxy
from bench.common import Measure, Profile, Target
from bench.load import LoadResult, run_fixed_rate, run_saturation
from bench.report import run_alone
from labkit.lab import AgentProc, Lab

DATA = "data path"
FOOTPRINT = "agent footprint"
WAYS = ("direct", "handwritten", "ours", "routed", "observed")
LABELS = {
    "direct": "direct",
    "handwritten": "hand-written mTLS pair",
    "ours": "ours (2 × kuma-dp, mTLS)",
    "routed": "ours + MeshHTTPRoute (2 subsets, 80/20) + MeshRateLimit (never reached)",
    "observed": "ours + MeshAccessLog (File, both proxies) + MeshTrace (Zipkin, 1 % sampled)",
}
ISTIO_AGENT_MB = 50
ISTIO_P99_OVERHEAD_MS = 2.9


class Usage:
    """CPU (percent of one core) and RSS (MB) of a process over a window."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self._cpu = self._cpu_seconds()
        self._started = time.monotonic()

    def _cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def finish(self) -> tuple[float, float]:
        elapsed = time.monotonic() - self._started
        cpu_percent = (self._cpu_seconds() - self._cpu) / elapsed * 100
        return cpu_percent, self.process.memory_info().rss / 1e6


def measure(profile: Profile) -> list[Measure]:
    with tempfile.TemporaryDirectory(prefix="kuma-bench-datapath-") as tmp:
        lab = Lab(Path(tmp))
        try:
            paths = twoproxy.start(lab)
            urls = {way: getattr(paths, way) for way in WAYS}
            fixed, saturated, usage = _repetitions(profile, urls, paths.web_agent)
            _check_mtls(paths.backend_agent)
            _check_routed(paths.routed_web_agent)
            _check_observed(paths.observed_web_agent, paths.access_log)
        finally:
            lab.close()
    return _data_path_measures(profile, fixed, saturated) + _footprint_measures(profile, usage)


def _repetitions(
    profile: Profile, urls: dict[str, str], agent: AgentProc
) -> tuple[dict[str, list[LoadResult]], dict[str, list[LoadResult]], dict[str, list[float]]]:
    fixed: dict[str, list[LoadResult]] = defaultdict(list)
    saturated: dict[str, list[LoadResult]] = defaultdict(list)
    usage: dict[str, list[float]] = defaultdict(list)
    envoy_pid = _envoy_child(agent)
    for rep in range(profile.repetitions):
        idle = Usage(agent.proc.popen.pid)
        time.sleep(profile.load_seconds)
        cpu, rss = idle.finish()
        usage["idle cpu"].append(cpu)
        usage["idle rss"].append(rss)
        for way in WAYS[rep % len(WAYS) :] + WAYS[: rep % len(WAYS)]:
            watch = (Usage(agent.proc.popen.pid), Usage(envoy_pid)) if way == "ours" else None
            fixed[way].append(run_fixed_rate(urls[way], profile.fixed_rate, profile.load_seconds))
            if watch:
                (cpu, rss), (envoy_cpu, _) = watch[0].finish(), watch[1].finish()
                usage["load cpu"].append(cpu)
                usage["load rss"].append(rss)
                usage["envoy cpu"].append(envoy_cpu)
            saturated[way].append(run_saturation(urls[way], profile.load_seconds))
    return fixed, saturated, usage


def _envoy_child(agent: AgentProc) -> int:
    children = psutil.Process(agent.proc.popen.pid).children()
    envoys = [c.pid for c in children if "envoy" in c.name()]
    if not envoys:
        raise RuntimeError(f"agent {agent.name} has no Envoy child")
    return envoys[0]


def _check_mtls(backend: AgentProc) -> None:
    """Our path must really be mutual TLS: the backend Envoy's inbound completed handshakes."""
    handshakes = sum(v for k, v in backend.envoy_stats().items() if k.endswith("ssl.handshake"))
    if handshakes == 0:
        raise RuntimeError("the backend's Envoy saw no TLS handshake: our path was not mTLS")


def _check_routed(web: AgentProc) -> None:
    """The routed way must really have gone through the route's subsets."""
    selected = sum(v for k, v in web.envoy_stats().items() if k.endswith("lb_subsets_selected"))
    if selected == 0:
        raise RuntimeError("the routed web Envoy selected no subset: the MeshHTTPRoute did not apply")


def _check_observed(web: AgentProc, access_log: Path) -> None:
    """The observed way must really have logged (both Envoys write every request to the file) and
    sampled requests for tracing (Envoy counts each sampling decision)."""
    if not access_log.exists() or access_log.stat().st_size == 0:
        raise RuntimeError(f"no access log at {access_log}: the MeshAccessLog did not apply")
    sampled = sum(v for k, v in web.envoy_stats().items() if k.endswith("tracing.random_sampling"))
    if sampled == 0:
        raise RuntimeError("the observed web Envoy sampled no request: the MeshTrace did not apply")


def _data_path_measures(
    profile: Profile, fixed: dict[str, list[LoadResult]], saturated: dict[str, list[LoadResult]]
) -> list[Measure]:
    rate = f"at {profile.fixed_rate} req/s"

    def latency(way: str, base: str, pick: str, target: Target | None = None, note: str = "") -> Measure:
        return Measure(
            DATA, f"{pick} {rate}, {LABELS[way]}", "ms",
            [getattr(r, f"{pick}_ms") for r in fixed[way]],
            LABELS[base], [getattr(r, f"{pick}_ms") for r in fixed[base]], target, note,
        )  # fmt: skip

    def throughput(way: str, base: str) -> Measure:
        return Measure(
            DATA, f"max throughput, {LABELS[way]}", "req/s",
            [r.requests_per_s for r in saturated[way]],
            LABELS[base], [r.requests_per_s for r in saturated[base]],
        )  # fmt: skip

    ours_p99 = latency("ours", "handwritten", "p99", Target(1.10, on_ratio=True))
    hand_p99 = latency("handwritten", "direct", "p99")
    added = ours_p99.median - (hand_p99.baseline_median or 0)
    ours_p99.note = f"two-proxy overhead over direct: +{added:.2f} ms p99 (Istio publishes +2.9 ms)"
    return [
        ours_p99,
        latency("ours", "handwritten", "p50"),
        hand_p99,
        latency("routed", "ours", "p99", Target(1.10, on_ratio=True)),
        latency("observed", "ours", "p99", Target(1.10, on_ratio=True)),
        throughput("ours", "handwritten"),
        throughput("handwritten", "direct"),
        throughput("routed", "ours"),
        throughput("observed", "ours"),
    ]


def _footprint_measures(profile: Profile, usage: dict[str, list[float]]) -> list[Measure]:
    rss_note = f"the Istio agent is about {ISTIO_AGENT_MB} MB"
    envoy_cpu = sorted(usage["envoy cpu"])[len(usage["envoy cpu"]) // 2]
    return [
        Measure(FOOTPRINT, "agent RSS, idle", "MB", usage["idle rss"], target=Target(40), note=rss_note),
        Measure(FOOTPRINT, f"agent RSS, Envoy at {profile.fixed_rate} req/s", "MB", usage["load rss"],
                target=Target(40)),
        Measure(FOOTPRINT, "agent CPU, idle", "% of a core", usage["idle cpu"]),
        Measure(FOOTPRINT, f"agent CPU, Envoy at {profile.fixed_rate} req/s", "% of a core",
                usage["load cpu"], note=f"its Envoy: {envoy_cpu:.0f} % of a core"),
    ]  # fmt: skip


if __name__ == "__main__":
    run_alone(measure, __doc__, "quick")
