"""`up`, `down` and `status` of the one-machine lab.

`up` makes the network (network.py), then runs the Vagrant provisioning scripts inside each host's
namespace in foreground mode (`ip netns exec <ns> bash vagrant/provision/<role>.sh --foreground`),
shows their step lines prefixed with the host, waits until every proxy is READY, sends traffic
from web to `backend.mesh` (resolved by web's agent, balanced over the backends by web's Envoy)
and prints the table. `down` needs no state: it kills every
process in the `kuma-lab-*` namespaces, deletes them and removes the state dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

from demo.hostlab import network
from demo.hostlab.network import HostPlan, NetworkError
from demo.hostlab.report import Row, Traffic, envoy_certificate, render
from kuma_common.dp_contract import ADMIN_SOCKET_NAME
from labkit.lab import LabError, Proc

STATE_DIR = Path("/run/kuma-lab")
PROJECT = Path(__file__).resolve().parents[2]
SCRIPTS = PROJECT / "vagrant" / "provision"
APP_PORT = 8080
BACKEND_NAME = "backend.mesh"  # the backends' service name: its VIP, resolved by the agent
CP_API_PORT = 5681
READINESS_PORT = 9902
LOAD_UID = 65534  # an ordinary UID: its traffic is redirected through Envoy
UP_TIMEOUT_S = 120.0
NAME_TIMEOUT_S = 20.0
STOP_GRACE_S = 8.0
DRAIN_TIME = "1s"


@dataclass
class HostProc(Proc):
    """A host's provisioning script (and, in foreground mode, everything it started)."""

    plan: HostPlan

    def tail(self) -> str:
        return self.log_tail(15)


def say(host: str, text: str) -> None:
    print(f"[{host}] {text}", flush=True)


# --- up --------------------------------------------------------------------------------------------------


def up(backends: int, detach: bool, rate: float, duration: float) -> int:
    existing = network.lab_namespaces()
    if existing:
        print(
            f"a lab is already up (namespaces {', '.join(existing)}): "
            "run `python -m demo.hostlab down` first",
            file=sys.stderr,
        )
        return 1
    plan = network.address_plan(backends)
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a shell may start us ignoring it
        signal.signal(sig, _interrupt)
    started = time.monotonic()
    procs: list[HostProc] = []
    try:
        procs = bring_up(plan)
        say("lab", f"all {len(plan) - 1} proxies READY {time.monotonic() - started:.1f} s after `up`")
        wait_resolvable(plan)
        traffic = send_traffic(plan, rate, duration)
        print("\n" + render(rows(plan, traffic)) + "\n", flush=True)
        if detach:
            say("lab", "up (detached); `python -m demo.hostlab down` removes it")
            return 0
        say("lab", "up; Ctrl-C (or `python -m demo.hostlab down`) stops it and removes everything")
        stay_up(procs)
        return 0
    except (LabError, NetworkError, ValueError) as exc:
        print(f"[lab] up failed: {exc}", file=sys.stderr, flush=True)
        down(procs)
        return 1
    except KeyboardInterrupt:
        say("lab", "interrupted: tearing down")
        down(procs)
        return 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def bring_up(plan: list[HostPlan]) -> list[HostProc]:
    STATE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    (STATE_DIR / "logs").mkdir(exist_ok=True)
    (STATE_DIR / "plan.json").write_text(json.dumps([vars(h) for h in plan], indent=1))
    say("lab", f"network: namespace {network.BRIDGE_NS} with bridge {network.BRIDGE}, {network.SUBNET}")
    network.create_bridge()
    for host in plan:
        network.create_host(host)
        say(host.name, f"namespace {host.namespace}: {network.HOST_IFNAME} {host.address} on the bridge")
    follower = LogFollower()
    procs = []
    try:
        for host in plan:  # the control plane first; workloads wait for its token in the shared dir
            procs.append(start_host(host, plan))
            follower.add(host.name, procs[-1].log)
        wait_ready(procs)
    finally:
        follower.stop()
    return procs


def start_host(host: HostPlan, plan: list[HostPlan]) -> HostProc:
    cp = plan[0]
    common = [
        "--foreground", "--no-create-user",
        "--project", str(PROJECT),
        "--prefix", sys.prefix,  # the repo's own venv: the scripts see a working install and skip it
        "--state-dir", str(STATE_DIR / "hosts" / host.name),
        "--shared-dir", str(STATE_DIR / "shared"),
        "--address", host.address,
        "--name", host.name,
    ]  # fmt: skip
    if host.role == "control-plane":
        workloads = " ".join(h.name for h in plan if h.role == "workload")
        argv = [str(SCRIPTS / "control-plane.sh"), *common, "--workloads", workloads]
    else:
        argv = [str(SCRIPTS / "workload.sh"), *common, "--cp-address", cp.address, "--service", host.service]
        argv += ["--app-port", str(APP_PORT), "--drain-time", DRAIN_TIME]
        argv += ["--upstream", f"http://{BACKEND_NAME}:{APP_PORT}"]
    log = STATE_DIR / "logs" / f"{host.name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, "bash", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives `up --detach`; Ctrl-C goes to `up` alone
        )
    say(host.name, f"provisioning: {Path(argv[0]).name} --foreground (log {log})")
    return HostProc(host.name, popen, log, host)


def wait_ready(procs: list[HostProc]) -> None:
    pending = {p.plan.name: p for p in procs if p.plan.role == "workload"}
    say("lab", f"waiting for every proxy to be READY: {', '.join(pending)}")
    deadline = time.monotonic() + UP_TIMEOUT_S
    while pending:
        for proc in procs:
            if proc.popen.poll() is not None:
                raise LabError(
                    f"{proc.plan.name}'s provisioning exited ({proc.popen.returncode}):\n{proc.tail()}"
                )
        for name, proc in list(pending.items()):
            if proxy_ready(proc.plan):
                del pending[name]
        if time.monotonic() > deadline:
            tails = "\n".join(p.tail() for p in pending.values())
            raise LabError(f"not READY after {UP_TIMEOUT_S:.0f} s: {', '.join(pending)}\n{tails}")
        time.sleep(0.2)


def in_namespace(host: HostPlan, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", host.namespace, *argv], capture_output=True, text=True, timeout=timeout
    )


def curl(host: HostPlan, url: str) -> str:
    try:
        return in_namespace(host, "curl", "-sS", "--max-time", "1", url).stdout.strip()
    except subprocess.TimeoutExpired:
        return ""


def proxy_ready(host: HostPlan) -> bool:
    return curl(host, f"http://127.0.0.1:{READINESS_PORT}/ready") == "READY"


def wait_resolvable(plan: list[HostPlan]) -> None:
    """Until web's agent answers the backends' name (its records follow the VIP's allocation)."""
    web = next(h for h in plan if h.name == network.WEB_HOST)
    deadline = time.monotonic() + NAME_TIMEOUT_S
    while True:
        found = in_namespace(web, "getent", "ahostsv4", BACKEND_NAME).stdout.split()
        if found:
            say("lab", f"web resolves {BACKEND_NAME} to {found[0]} (its VIP, answered by web's agent)")
            return
        if time.monotonic() > deadline:
            raise LabError(f"web could not resolve {BACKEND_NAME} within {NAME_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def send_traffic(plan: list[HostPlan], rate: float, duration: float) -> dict[str, Traffic]:
    """Requests from web to the backends by name, as an ordinary UID: its DNS query answered by
    web's agent, the requests through web's Envoy (transparent, mTLS). Per answering instance."""
    web = next(h for h in plan if h.name == network.WEB_HOST)
    target = f"{BACKEND_NAME}:{APP_PORT}"
    say("lab", f"traffic: web -> http://{target}/ by name, {duration:g} s at {rate:g} requests/s")
    argv = ["setpriv", f"--reuid={LOAD_UID}", f"--regid={LOAD_UID}", "--clear-groups", "--"]
    argv += [sys.executable, "-m", "demo.hostlab.load", "--rate", str(rate), "--duration", str(duration)]
    argv += ["--target", target]
    res = subprocess.run(
        ["ip", "netns", "exec", web.namespace, *argv],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=duration + 60,
    )
    if res.returncode != 0:
        raise LabError(f"the traffic client failed ({res.returncode}): {res.stderr.strip()[-800:]}")
    return {instance: Traffic(**figures) for instance, figures in json.loads(res.stdout).items()}


def stay_up(procs: list[HostProc]) -> None:
    """Until Ctrl-C/SIGTERM (KeyboardInterrupt, handled by `up`) or a host's services stop."""
    while True:
        for proc in procs:
            if proc.popen.poll() is not None:
                say(
                    proc.plan.name,
                    f"provisioning exited ({proc.popen.returncode}): tearing down\n{proc.tail()}",
                )
                down(procs)
                return
        time.sleep(0.5)


# --- status / table --------------------------------------------------------------------------------------


def load_plan() -> list[HostPlan] | None:
    try:
        return [HostPlan(**h) for h in json.loads((STATE_DIR / "plan.json").read_text())]
    except (OSError, ValueError, TypeError):
        return None


def rows(plan: list[HostPlan], traffic: dict[str, Traffic] | None = None) -> list[Row]:
    result = []
    names = service_names(plan[0])
    for host in plan:
        if host.role == "control-plane":
            up_ = curl(host, f"http://127.0.0.1:{CP_API_PORT}/") != ""
            result.append(
                Row(host.name, "control-plane", host.address, "kuma-cp up" if up_ else "kuma-cp down")
            )
            continue
        row = Row(host.name, host.service, host.address, "READY" if proxy_ready(host) else "not ready")
        row.name, row.vip = names.get(host.service, ("-", "-"))
        sock = STATE_DIR / "hosts" / host.name / "dp" / "work" / ADMIN_SOCKET_NAME
        try:
            row.identity, row.expires = envoy_certificate(sock)
        except (httpx.HTTPError, OSError, ValueError):  # a table cell, never a traceback
            row.identity = "(admin unreachable)"
        if traffic is not None:
            row.traffic = merged(traffic.values()) if host.service == "web" else traffic.get(host.name)
        result.append(row)
    return result


def service_names(cp: HostPlan) -> dict[str, tuple[str, str]]:
    """service → (its DNS name, its VIP), from the control plane's API (empty if unreachable)."""
    try:
        body = json.loads(curl(cp, f"http://127.0.0.1:{CP_API_PORT}/meshes/default/vips"))
        return {i["service"]: (i["names"][0] if i["names"] else "-", i["ip"]) for i in body["items"]}
    except (ValueError, KeyError, TypeError, IndexError):
        return {}


def merged(parts: Iterable[Traffic]) -> Traffic:
    total = Traffic()
    for part in parts:
        total.sent += part.sent
        total.ok += part.ok
        total.mtls += part.mtls
        total.latencies_ms.extend(part.latencies_ms)
    return total


def status() -> int:
    namespaces = network.lab_namespaces()
    plan = load_plan()
    if not namespaces:
        print("no lab is up")
        return 1
    if plan is None:
        print(f"lab namespaces without a state file (a crashed `up`?): {', '.join(namespaces)}; run `down`")
        return 1
    print(render(rows(plan)))
    return 0


# --- down ------------------------------------------------------------------------------------------------


def down(procs: list[HostProc] | None = None) -> int:
    """Kill every process in the lab's namespaces, delete them, remove the state dir. Idempotent."""
    namespaces = network.lab_namespaces()
    pids = {pid for ns in namespaces for pid in network.pids_in(ns)}
    pids |= {p.popen.pid for p in procs or [] if p.popen.poll() is None}
    stop_processes(pids, procs or [])
    for ns in namespaces:
        network.delete_namespace(ns)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    if namespaces or pids:
        say("lab", f"down: stopped {len(pids)} processes, removed {len(namespaces)} namespaces")
    else:
        say("lab", "down: no lab was up, nothing to remove")
    return 0


def stop_processes(pids: set[int], procs: list[HostProc]) -> None:
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        for pid in pids:
            _signal(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for proc in procs:
                proc.popen.poll()  # reap our own children, else they linger as zombies
            pids = {pid for pid in pids if _alive(pid)}
            if not pids:
                return
            time.sleep(0.1)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- progress --------------------------------------------------------------------------------------------


class LogFollower:
    """Shows the scripts' step lines (`==> ...`) and errors as they are written, host-prefixed."""

    def __init__(self) -> None:
        self.logs: dict[str, tuple[Path, int]] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def add(self, host: str, log: Path) -> None:
        with self.lock:
            self.logs[host] = (log, 0)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=2)
        self._poll()  # the last lines

    def _run(self) -> None:
        while not self.done.wait(0.1):
            self._poll()

    def _poll(self) -> None:
        with self.lock:
            for host, (log, offset) in list(self.logs.items()):
                try:
                    with log.open("rb") as fh:
                        fh.seek(offset)
                        data = fh.read()
                except OSError:
                    continue
                complete = data[: data.rfind(b"\n") + 1]
                self.logs[host] = (log, offset + len(complete))
                for line in complete.decode(errors="replace").splitlines():
                    if line.startswith("==> "):
                        say(host, line[4:])
                    elif line.startswith("error:"):
                        say(host, line)
