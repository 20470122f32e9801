"""Control-plane scale: N simulated proxies on real ADS streams against the real `kuma-cp run`.

The mesh `default` (no mTLS, as Kuma creates it, with Kuma's initial policies) has 100 services, each
with a MeshTimeout and a MeshRetry for calls to it; N Dataplanes, one inbound each,
spread round-robin over them, all transparent-proxied (Kuma's default on universal with the
transparent proxy): every proxy gets a cluster per service and an outbound listener per endpoint,
so one new endpoint of any service touches every proxy. Dataplanes are applied through the REST
API and tokens issued by it before any timing; the proxies also send their Dataplane as
`dataplane.resource`, as `kuma-dp run -d` does. The load runs in a separate process
(bench/xds_load.py, one TLS connection per proxy).

Per repetition: connect all N at once → time until every proxy has ACKed CDS, EDS and LDS; then
apply one new Dataplane of service `svc-0` → time until every proxy has ACKed the EDS and the
LDS response holding its address, the control plane's CPU-seconds over that change, and its RSS.

Run: `.venv/bin/python -m bench.cp_scale [--n 100 1000] [--reps 3] [--profile PATH]` (JSON lines of
Measures; `--profile` samples the CP with py-spy, a bench-only tool: `pip install py-spy`).
Several instances (issue 16): `--store postgres --instances 2` starts a private PostgreSQL
(labkit/postgres.py), `kuma-cp migrate up`, and the instances sharing one TLS certificate; proxy i
connects to instance i mod count (one load process per instance), the change is applied through the
first instance and timed until every proxy on every instance has it. `--ha` runs issue 16's
comparison in one go: N=1000 on one SQLite instance, then N=2000 over two instances on PostgreSQL.

Figures on the 2-core dev VM (shared with other work, so noisy), median of 3 (before) and 5 (after)
repetitions, before → after the issue-7 fixes in control_plane/xds:
  N=100:  first config 0.93 → 0.50 s, change 0.57 → 0.16 s, 0.52 → 0.11 CPU-s, RSS 169 → 151 MB
  N=500:  first config 9.4 → 3.9 s,   change 5.3 → 1.05 s,  4.8 → 1.1 CPU-s,   RSS 661 → 437 MB
  N=1000: first config 19.1 → 8.8 s,  change 14.2 → 3.6 s,  14.1 → 3.6 CPU-s,  RSS 1463 → 809 MB
Each change sends ~550 MB at N=1000 (every proxy's LDS holds one listener per endpoint of the
mesh): what is left is mostly the TLS front's and gRPC's cost per byte and per connection.
Issue 11 (policies; the mesh's initial policies plus a MeshTimeout and a MeshRetry per service),
N=1000, same day: the code before the policy engine without policies (3 reps) → with them (5 reps,
bench/run): first config 6.2 → 6.0 s, change 1.93 → 1.72 s, 1.97 → 1.73 CPU-s, RSS 426 → 458 MB
(spreads 415–448 and 416–484; the snapshots themselves hold 1.7 MB more, measured in process).
Outbound policies selecting every proxy are merged once per mesh change, not per proxy.
Issue 16, one `--ha` run (3 reps): N=1000 on one SQLite instance: first config 7.5 s, change
2.02 s, 2.06 CPU-s, RSS 471 MB; N=2000 over two instances on PostgreSQL: first config 14.9 s,
change 3.69 s (target 2 s not met: each instance does ~2x the N=1000 work, both share 2 cores with
the load and PostgreSQL), 4.79 CPU-s over both, RSS 581 MB per instance.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from bench.common import PROFILES, Measure, Profile, Target
from control_plane.resources.registry import TYPES
from kuma_common.api_paths import TOKENS_PATH
from labkit.lab import BIN, ControlPlaneProc, Lab

SECTION = "control-plane scale"
MESH = "default"
SERVICES = 100
SHARED_SERVICE = "svc-0"
INBOUND_PORT = 8080
TARGET_N = 1000
HA_TARGET_N = 2000  # over two instances on PostgreSQL (issue 16)
CONVERGENCE_TARGET = Target(2.0)  # seconds, at N = 1,000
RSS_TARGET = Target(300.0)  # MB, at N = 1,000
KUMA_MB_PER_PROXY = 1.0
SETUP_WORKERS = 8
EVENT_TIMEOUT_S = float(os.environ.get("CP_SCALE_EVENT_TIMEOUT", "180"))


class BenchError(Exception):
    """The benchmark could not run (the CP or the load process failed); the message says why."""


def service_of(i: int) -> str:
    return f"svc-{i % SERVICES}"


def proxy_address(i: int) -> str:
    return f"10.1.{i // 250}.{i % 250 + 1}"


def dataplane_doc(name: str, service: str, address: str) -> dict[str, Any]:
    return {
        "type": "Dataplane",
        "mesh": MESH,
        "name": name,
        "networking": {
            "address": address,
            "inbound": [
                {"port": INBOUND_PORT, "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}
            ],
            "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001},
        },
    }


# Besides Kuma's initial policies of the mesh: per service, what its callers get (Kuma's
# producer-style policies: the whole mesh calling that service).
SERVICE_POLICIES = {
    "MeshTimeout": {"connectionTimeout": "2s", "http": {"requestTimeout": "5s"}},
    "MeshRetry": {"http": {"numRetries": 2, "retryOn": ["5xx"]}},
}


def service_policies() -> list[dict[str, Any]]:
    return [
        {
            "type": kind,
            "mesh": MESH,
            "name": f"{kind.lower()}-svc-{i}",
            "spec": {
                "targetRef": {"kind": "Mesh"},
                "to": [{"targetRef": {"kind": "MeshService", "name": f"svc-{i}"}, "default": default}],
            },
        }
        for kind, default in SERVICE_POLICIES.items()
        if kind in TYPES
        for i in range(SERVICES)
    ]


@dataclass
class RepResult:
    first_config_s: float
    change_s: float
    change_eds_s: float
    cpu_s: float  # every instance's CPU over the change
    rss_mb: float  # the largest instance's
    idle_rss_mb: float  # the CP with the Dataplanes stored, before any proxy connected
    load_cpu_s: float  # the load processes' CPU over the change (they share the machine's cores)


@dataclass(frozen=True)
class Topology:
    """Where the control plane runs: `instances` kuma-cp processes on one `store`."""

    store: str = "sqlite"
    instances: int = 1

    @property
    def label(self) -> str:
        names = {"sqlite": "SQLite", "postgres": "PostgreSQL", "memory": "memory"}
        plural = "s" if self.instances > 1 else ""
        return f"{self.instances} instance{plural} on {names.get(self.store, self.store)}"


SINGLE = Topology()
# Issue 16's comparison: twice the proxies over two instances on PostgreSQL.
HA = Topology("postgres", 2)


class Scenario:
    """The control-plane instances with N Dataplanes and tokens, and one load process per instance
    driving its share of the N streams (proxy i connects to instance i mod count)."""

    def __init__(self, lab: Lab, cps: Sequence[ControlPlaneProc], n: int) -> None:
        self.lab, self.cps, self.n = lab, list(cps), n
        self.api = httpx.Client(base_url=self.cps[0].api_url, timeout=30)
        self.cp_processes = [psutil.Process(cp.proc.popen.pid) for cp in self.cps]
        self.changes = 0
        self.loads: list[subprocess.Popen[str]] = []
        self.idle_rss_mb = 0.0

    def prepare(self) -> None:
        names = [f"dp-{i}" for i in range(self.n)]
        docs = [dataplane_doc(name, service_of(i), proxy_address(i)) for i, name in enumerate(names)]
        with ThreadPoolExecutor(SETUP_WORKERS) as pool:
            list(pool.map(self._apply, [*docs, *service_policies()]))
            tokens = list(pool.map(self._token, names))
        proxies = [{"name": d["name"], "token": t, "dataplane": d} for d, t in zip(docs, tokens, strict=True)]
        for index, cp in enumerate(self.cps):
            path = self.lab.root / f"proxies-{index}.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds tokens
            with os.fdopen(fd, "w") as out:
                json.dump({"mesh": MESH, "proxies": proxies[index :: len(self.cps)]}, out)
            self.loads.append(self._start_load(cp, path, index))
        self.idle_rss_mb = max(p.memory_info().rss for p in self.cp_processes) / 1e6

    def _apply(self, doc: dict[str, Any]) -> None:
        response = self.api.put(f"/meshes/{MESH}/{TYPES[doc['type']].plural}/{doc['name']}", json=doc)
        if response.status_code not in (200, 201):
            raise BenchError(f"applying {doc['type']} {doc['name']}: {response.status_code} {response.text}")

    def _token(self, name: str) -> str:
        response = self.api.post(TOKENS_PATH, json={"name": name, "mesh": MESH, "validFor": "24h"})
        if response.status_code != 200:
            raise BenchError(f"token for {name}: {response.status_code} {response.text}")
        return response.text.strip()

    def _start_load(self, cp: ControlPlaneProc, proxies: Path, index: int) -> subprocess.Popen[str]:
        argv = [
            sys.executable, "-m", "bench.xds_load",
            "--target", f"localhost:{cp.dp_port}",
            "--ca-cert", str(cp.ca_cert),
            "--proxies", str(proxies),
            "--timeout", str(EVENT_TIMEOUT_S),
        ]  # fmt: skip
        log = (self.lab.root / f"xds-load-{index}.log").open("ab")
        return subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
        )

    def command(self, **command: Any) -> dict[str, Any]:
        """Sent to every load process; their answers merged."""
        for load in self.loads:
            assert load.stdin is not None
            load.stdin.write(json.dumps(command) + "\n")
            load.stdin.flush()
        return self.events()

    def events(self) -> dict[str, Any]:
        """The next event of every load process, merged (times per proxy joined, `started` the
        earliest, `missing` and `errors` concatenated)."""
        merged: dict[str, Any] = {}
        for index, load in enumerate(self.loads):
            assert load.stdout is not None
            event = self._event(load.stdout, index)
            for key, value in event.items():
                if isinstance(value, dict):
                    merged.setdefault(key, {}).update(value)
                elif isinstance(value, list):
                    merged.setdefault(key, []).extend(value)
                elif key == "started":
                    merged[key] = min(value, merged.get(key, value))
                else:
                    merged[key] = value
        return merged

    def _event(self, stdout: IO[str], index: int) -> dict[str, Any]:
        line = stdout.readline()
        if not line:
            log = (self.lab.root / f"xds-load-{index}.log").read_text(errors="replace")[-2000:]
            raise BenchError(f"the load process ended unexpectedly:\n{log}")
        return json.loads(line)

    def repetition(self) -> RepResult:
        connected = self.command(cmd="connect")
        _require_all(connected, "first config")
        first = max(connected["first_config"].values()) - connected["started"]
        self.changes += 1
        address = f"10.250.0.{self.changes}"
        assert self.command(cmd="watch", address=address)["event"] == "watching"
        cpu_before = sum(_cpu_seconds(p) for p in self.cp_processes)
        load_processes = [psutil.Process(load.pid) for load in self.loads]
        load_before = sum(_cpu_seconds(p) for p in load_processes)
        started = time.monotonic()
        self._apply(dataplane_doc(f"new-{self.changes}", SHARED_SERVICE, address))  # through instance 0
        changed = self.events()
        _require_all(changed, "the change")
        eds = max(changed["eds"].values()) - started
        change = max(eds, max(changed["lds"].values()) - started)
        cpu = sum(_cpu_seconds(p) for p in self.cp_processes) - cpu_before
        load_cpu = sum(_cpu_seconds(p) for p in load_processes) - load_before
        rss = max(p.memory_info().rss for p in self.cp_processes) / 1e6
        self.command(cmd="close")
        return RepResult(first, change, eds, cpu, rss, self.idle_rss_mb, load_cpu)

    def close(self) -> None:
        self.api.close()
        for load in self.loads:
            if load.stdin is not None:
                load.stdin.close()
            try:
                load.wait(10)
            except subprocess.TimeoutExpired:
                load.kill()
                load.wait(5)


def _require_all(event: dict[str, Any], what: str) -> None:
    if event.get("missing"):
        missing = event["missing"]
        raise BenchError(
            f"{len(missing)} proxies never got {what} (e.g. {missing[:3]}); errors: {event.get('errors')}"
        )


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


# Every simulated proxy connects from 127.0.0.1 (real ones come from their own hosts), and proxies
# stay registered between repetitions: each one starts from the same store.
CP_ENV = {
    "KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY": "1h",
    "KUMA_DP_SERVER_MAX_CONNECTIONS_PER_SOURCE": "100000",
}


@contextmanager
def scenario(n: int, topology: Topology = SINGLE) -> Iterator[Scenario]:
    with tempfile.TemporaryDirectory(prefix="kuma-bench-cp-scale-") as tmp, ExitStack() as stack:
        lab = Lab(Path(tmp))
        stack.callback(lab.close)
        env = dict(CP_ENV)
        if topology.store == "postgres":
            env.update(_postgres(lab, stack))
        elif topology.store != "sqlite":
            env["KUMA_STORE_TYPE"] = topology.store
        cps = _start_instances(lab, topology.instances, env)
        scen = Scenario(lab, cps, n)
        stack.callback(scen.close)
        scen.prepare()
        yield scen


def _postgres(lab: Lab, stack: ExitStack) -> dict[str, str]:
    """A private PostgreSQL (Debian's binaries) with a migrated database; its KUMA_STORE_* vars."""
    from labkit.postgres import PostgresUnavailable, postgres_server

    try:
        server = stack.enter_context(postgres_server())
    except PostgresUnavailable as exc:
        raise BenchError(str(exc)) from None
    env = server.env(server.new_database())
    migrate = lab.spawn("migrate", [str(BIN / "kuma-cp"), "migrate", "up"], env, inherit_kuma=False)
    if migrate.popen.wait(120) != 0:
        raise BenchError(f"kuma-cp migrate up failed:\n{migrate.log_tail()}")
    return env


def _start_instances(lab: Lab, count: int, env: dict[str, str]) -> list[ControlPlaneProc]:
    """`count` instances sharing the first one's TLS certificate (the one the proxies trust)."""
    cps: list[ControlPlaneProc] = []
    for index in range(count):
        tls = {}
        if cps:
            tls = {
                "KUMA_GENERAL_TLS_CERT_FILE": str(cps[0].ca_cert),
                "KUMA_GENERAL_TLS_KEY_FILE": str(cps[0].work_dir / "kuma-cp.key"),
            }
        cp = lab.start_control_plane(work_dir=lab.root / f"kuma-cp-{index}", **env, **tls)
        lab.wait_control_plane(cp)
        if cps:  # the proxies' CA file is the first instance's
            cp = ControlPlaneProc(cp.proc, cps[0].work_dir, cp.api_url, cp.dp_port, cp.diagnostics_url)
        cps.append(cp)
    return cps


def run_n(
    n: int, repetitions: int, profile_to: Path | None = None, topology: Topology = SINGLE
) -> list[RepResult]:
    with scenario(n, topology) as scen, _sampled(scen.cp_processes[0].pid, profile_to):
        return [scen.repetition() for _ in range(repetitions)]


@contextmanager
def _sampled(pid: int, output: Path | None) -> Iterator[None]:
    """Sample the control plane's stacks (every thread) with py-spy into `output` (collapsed
    stacks) while the block runs. py-spy is a bench-only tool: `pip install py-spy` to use it."""
    if output is None:
        yield
        return
    argv = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--output", str(output)]
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / argv[0]), *argv[1:], "--rate", "200", "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


def measures_for(n: int, results: Sequence[RepResult], topology: Topology = SINGLE) -> list[Measure]:
    at_target = (topology, n) in ((SINGLE, TARGET_N), (HA, HA_TARGET_N))
    where = "" if topology == SINGLE else f", {topology.label}"
    rss = statistics.median(r.rss_mb for r in results)
    idle = statistics.median(r.idle_rss_mb for r in results)
    eds = statistics.median(r.change_eds_s for r in results)
    load_cpu = statistics.median(r.load_cpu_s for r in results)
    per = " per instance (the largest)" if topology.instances > 1 else ""
    all_of = " (all instances)" if topology.instances > 1 else ""
    return [
        Measure(SECTION, f"first config, all {n} proxies{where}", "s", [r.first_config_s for r in results]),
        Measure(
            SECTION,
            f"change convergence (new endpoint, EDS+LDS ACKed), N={n}{where}",
            "s",
            [r.change_s for r in results],
            target=CONVERGENCE_TARGET if at_target else None,
            note=f"EDS alone: median {eds:.3f} s; the load used {load_cpu:.2f} CPU-s (same cores)",
        ),
        Measure(SECTION, f"CP CPU per change{all_of}, N={n}{where}", "s", [r.cpu_s for r in results]),
        Measure(
            SECTION,
            f"CP RSS after convergence{per}, N={n}{where}",
            "MB",
            [r.rss_mb for r in results],
            target=RSS_TARGET if at_target and topology == SINGLE else None,
            note=(
                f"{rss * topology.instances / n:.2f} MB per proxy (Kuma budgets ~{KUMA_MB_PER_PROXY:g} MB); "
                f"{idle:.0f} MB before any proxy connected"
            ),
        ),
    ]


def measure(profile: Profile) -> list[Measure]:
    result: list[Measure] = []
    for n in profile.proxy_counts:
        result.extend(measures_for(n, run_n(n, profile.repetitions)))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=list(PROFILES["quick"].proxy_counts))
    parser.add_argument("--reps", type=int, default=PROFILES["quick"].repetitions)
    parser.add_argument("--store", choices=["sqlite", "postgres", "memory"], default="sqlite")
    parser.add_argument("--instances", type=int, default=1, help="control-plane instances (postgres only)")
    parser.add_argument(
        "--ha",
        action="store_true",
        help=f"issue 16's comparison: N={TARGET_N} on one SQLite instance, then N={HA_TARGET_N} over "
        "two instances on PostgreSQL (ignores --n, --store, --instances)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of the CP, to <PATH>.<n>.txt")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.n) or args.reps < 1:
        sys.exit("cp_scale: --n and --reps must be positive")
    if args.instances < 1:
        sys.exit("cp_scale: --instances must be positive")
    if args.instances > 1 and args.store != "postgres":
        sys.exit("cp_scale: several instances share a PostgreSQL store only (--store postgres)")
    runs = (
        [(TARGET_N, SINGLE), (HA_TARGET_N, HA)]
        if args.ha
        else [(n, Topology(args.store, args.instances)) for n in args.n]
    )
    try:
        for n, topology in runs:
            out = args.profile.with_suffix(f".{n}.txt") if args.profile else None
            for m in measures_for(n, run_n(n, args.reps, out, topology), topology):
                print(json.dumps(m.to_json()), flush=True)
    except BenchError as exc:
        sys.exit(f"cp_scale: {exc}")


if __name__ == "__main__":
    main()
