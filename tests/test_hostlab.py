"""The one-machine lab (`python -m demo.hostlab`): its pure parts, then the real thing as root —
up with 3 hosts carries mTLS traffic web -> backend.mesh (by name: web's agent answers its VIP),
and down leaves nothing behind: no namespace, link, firewall rule or process (compared with what
was there before up)."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.hostlab.network import IFNAMSIZ, PREFIX, address_plan
from demo.hostlab.report import Row, Traffic, percentile, render
from labkit.waiting import wait_until
from tests.support.netns_lab import require_root

ROOT = Path(__file__).resolve().parents[1]
LAB = [sys.executable, "-m", "demo.hostlab"]

# --- pure parts -------------------------------------------------------------------------------------


def test_address_plan_three_hosts() -> None:
    plan = address_plan(1)
    assert [(h.name, h.role, h.service, h.address) for h in plan] == [
        ("cp", "control-plane", "", "10.213.0.10"),
        ("web", "workload", "web", "10.213.0.11"),
        ("backend-1", "workload", "backend", "10.213.0.21"),
    ]
    assert [h.namespace for h in plan] == ["kuma-lab-cp", "kuma-lab-web", "kuma-lab-backend-1"]


def test_address_plan_names_fit_and_stay_in_the_subnet() -> None:
    plan = address_plan(50)
    assert len({h.address for h in plan}) == len({h.peer for h in plan}) == len(plan) == 52
    assert all(len(h.peer) <= IFNAMSIZ and h.namespace.startswith(PREFIX) for h in plan)
    assert all(ipaddress.ip_address(h.address) in ipaddress.ip_network("10.213.0.0/24") for h in plan)
    with pytest.raises(ValueError, match="--backends 0"):
        address_plan(0)


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0


def test_table_rendering() -> None:
    rows = [
        Row("cp", "control-plane", "10.213.0.10", "kuma-cp up"),
        Row("web", "web", "10.213.0.11", "READY", "web.mesh", "240.0.0.2", "spiffe://default/web",
            "2026-11-27 11:00:00", Traffic(4, 4, 4, [1.0, 2.0, 3.0, 10.0])),
    ]  # fmt: skip
    lines = render(rows).splitlines()
    assert lines[0].split() == [
        "host", "role", "name", "VIP", "address", "proxy", "identity", "cert", "expires", "(UTC)",
        "sent", "ok", "mTLS", "p50", "ms", "p99", "ms",
    ]  # fmt: skip
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["cp", "control-plane", "-", "-", "10.213.0.10", "kuma-cp", "up"] + ["-"] * 7
    assert lines[3].split()[:4] == ["web", "web", "web.mesh", "240.0.0.2"]
    assert lines[3].split()[-5:] == ["4", "4", "4", "2.00", "10.00"]
    assert lines[3].index("spiffe") == lines[0].index("identity")


# --- the real lab (root) ------------------------------------------------------------------------------

COUNTERS = re.compile(r"\[\d+:\d+\]|packets \d+ bytes \d+")


def _lines(*argv: str) -> list[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    return [COUNTERS.sub("", line) for line in res.stdout.splitlines() if not line.startswith("#")]


def root_snapshot() -> dict[str, list[str]]:
    """What the lab could leave in the root namespace. Namespaces: only the lab's (other tests
    running at the same time make and remove their own)."""
    return {
        "lab namespaces": [n for n in _lines("ip", "netns", "list") if n.startswith(PREFIX)],
        "links": [re.sub(r"^\d+: ", "", line) for line in _lines("ip", "-o", "link")],
        "iptables": _lines("iptables-save"),
        "ip6tables": _lines("ip6tables-save"),
        "nft": _lines("nft", "list", "ruleset"),
    }


def marked_processes(mark: str) -> list[str]:
    """Processes descended from a lab run of this test: they inherit KUMALAB_TEST_MARK."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            if f"KUMALAB_TEST_MARK={mark}".encode() in environ.split(b"\0"):
                stat = (proc / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # zombies are reaped by init
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    found.append(f"{proc.name} {cmdline}")
        except OSError:
            continue
    return found


def lab(*args: str, mark: str, timeout: float = 150, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUMALAB_TEST_MARK": mark}
    return subprocess.run(
        [*LAB, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env, **kwargs
    )


@pytest.fixture
def clean_root() -> Iterator[tuple[dict[str, list[str]], str]]:
    """The root namespace before; `down` (harmless) whatever the test did, then compare."""
    require_root()
    lab("down", mark="pre")  # a lab left by an earlier, interrupted run
    before = root_snapshot()
    mark = uuid.uuid4().hex
    yield before, mark
    lab("down", mark="post")


def assert_nothing_left(before: dict[str, list[str]], mark: str) -> None:
    assert root_snapshot() == before
    assert not Path("/run/kuma-lab").exists()
    wait_until(lambda: marked_processes(mark) == [], timeout=10)


def table_rows(stdout: str) -> dict[str, list[str]]:
    return {
        line.split()[0]: line.split()
        for line in stdout.splitlines()
        if re.match(r"^(cp|web|backend-\d+) ", line)
    }


def test_up_carries_mtls_traffic_then_down_leaves_nothing(
    clean_root: tuple[dict[str, list[str]], str],
) -> None:
    before, mark = clean_root
    up = lab("up", "--detach", "--duration", "2", mark=mark)
    assert up.returncode == 0, up.stdout + up.stderr
    rows = table_rows(up.stdout)
    assert set(rows) == {"cp", "web", "backend-1"}, up.stdout
    assert rows["cp"][5:7] == ["kuma-cp", "up"]
    vips = {}
    for host, service in (("web", "web"), ("backend-1", "backend")):
        host_, role, name, vip, _address, state, identity, _day, _time, sent, ok, mtls, *_ = rows[host]
        assert (role, state, identity) == (service, "READY", f"spiffe://default/{service}"), up.stdout
        assert name == f"{service}.mesh" and ipaddress.ip_address(vip) in ipaddress.ip_network("240.0.0.0/4")
        assert int(sent) > 0 and int(ok) == int(sent) and int(mtls) == int(sent), up.stdout
        vips[name] = vip
    assert f"[lab] web resolves backend.mesh to {vips['backend.mesh']}" in up.stdout
    assert "traffic: web -> http://backend.mesh:8080/ by name" in up.stdout
    assert re.search(r"\[lab\] all 2 proxies READY [\d.]+ s after `up`", up.stdout)
    # progress: which host, which step
    assert "[web] transparent proxy: iptables redirect to Envoy" in up.stdout
    assert "[cp] dataplane token for backend-1" in up.stdout
    # the lab's addresses exist only inside its namespaces
    assert "10.213.0." not in subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout

    again = lab("up", "--detach", mark=mark)
    assert again.returncode == 1 and "a lab is already up" in again.stderr
    status = lab("status", mark=mark)
    assert status.returncode == 0 and status.stdout.count("READY") == 2, status.stdout

    down = lab("down", mark=mark)
    assert down.returncode == 0 and "removed 4 namespaces" in down.stdout, down.stdout + down.stderr
    assert_nothing_left(before, mark)


def test_down_without_up_is_harmless(clean_root: tuple[dict[str, list[str]], str]) -> None:
    before, mark = clean_root
    res = lab("down", mark=mark)
    assert res.returncode == 0 and "no lab was up" in res.stdout
    assert_nothing_left(before, mark)


def test_down_after_a_killed_up_leaves_nothing(clean_root: tuple[dict[str, list[str]], str]) -> None:
    before, mark = clean_root
    env = {**os.environ, "KUMALAB_TEST_MARK": mark}
    up = subprocess.Popen(
        [*LAB, "up"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env
    )
    try:
        assert up.stdout is not None
        for line in up.stdout:  # kill it mid-way: agents started, not yet READY
            if line.startswith("[backend-1] started kuma-dp"):
                break
        else:
            pytest.fail("up ended before starting backend-1's agent")
    finally:
        up.send_signal(signal.SIGKILL)
        up.wait()
    assert marked_processes(mark), "the lab's processes should still run after up was killed"
    res = lab("down", mark=mark)
    assert res.returncode == 0 and "removed 4 namespaces" in res.stdout, res.stdout + res.stderr
    assert_nothing_left(before, mark)


def test_without_root_it_says_so_and_runs_the_loopback_demo() -> None:
    if os.geteuid() != 0:
        pytest.skip("runs as root and drops to an ordinary UID")
    nobody = 65534
    res = subprocess.run(
        ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", *LAB, "down"],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert res.returncode == 1 and "needs root" in res.stderr
    started = time.monotonic()
    demo = subprocess.Popen(
        ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", *LAB, "up"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "HOME": "/tmp"},
    )  # fmt: skip
    out, err = demo.communicate(timeout=90)
    assert "needs root" in err and "running the loopback demo instead" in err
    assert demo.returncode == 0, out + err
    assert "[1/8] control plane" in out and time.monotonic() - started < 90
