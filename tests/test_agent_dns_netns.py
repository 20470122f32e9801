"""The DNS server behind Kuma's DNS redirect, in network namespaces: the rules installed with
`redirect_dns` in an "app" namespace, dnsmasq as the real upstream in a "peer" namespace, the
server run as the proxy's UID (5678), the application's queries made as UID 1000 to the upstream's
address. The application's queries reach the server (mesh names answered), and the server's own
forwarded queries reach dnsmasq instead of coming back (the rules exempt the proxy's UID). Run as
another UID, the server sees its own queries come back and fails them instead of looping.
Needs root; skipped otherwise, but fails when CI=true."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.waiting import wait_until
from tests.support.dns_lab import records_body, require_dnsmasq
from tests.support.netns_lab import NetnsLab, require_root
from transparent_proxy import apply
from transparent_proxy.sources import build_config, flag_layer

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
APP_UID, PROXY_UID, OTHER_UID = 1000, 5678, 1001
APP_V4, UPSTREAM_V4 = "10.79.0.1", "10.79.0.2"
ASK = """
import sys, dns.message, dns.query
name, how = sys.argv[1], sys.argv[2]
send = dns.query.tcp if how == "tcp" else dns.query.udp
try:
    rdtype = sys.argv[4] if len(sys.argv) > 4 else "A"
    answer = send(dns.message.make_query(name, rdtype), sys.argv[3], timeout=3, port=53)
except Exception as exc:
    sys.exit(print("ERROR", type(exc).__name__))
print(dns.rcode.to_text(answer.rcode()), " ".join(sorted(rd.to_text() for r in answer.answer for rd in r)))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every UID of the test can read (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="kuma-dns-netns-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_redirected_queries_are_answered_and_forwarded_without_looping(shared_dir: Path) -> None:
    require_root()
    dnsmasq = require_dnsmasq()
    hosts = shared_dir / "hosts"
    hosts.write_text("192.0.2.10 example.test\n")
    records = shared_dir / "records.json"
    records.write_text(records_body({"backend.mesh": ["240.0.0.3"]}))
    with NetnsLab("dn") as lab:
        app, peer = lab.namespace(), lab.namespace()
        lab.veth(app, f"{APP_V4}/24", peer, f"{UPSTREAM_V4}/24")
        upstream = [dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file", "--no-resolv",
                    "--no-hosts", f"--addn-hosts={hosts}", "--port=53", f"--listen-address={UPSTREAM_V4}",
                    "--bind-interfaces", f"--user={pwd.getpwuid(os.getuid()).pw_name}"]  # fmt: skip
        lab.popen(peer, upstream)
        # Kuma's --redirect-dns catches queries to the resolv.conf's nameservers: the app's is dnsmasq.
        resolv_conf = shared_dir / "resolv.conf"
        resolv_conf.write_text(f"nameserver {UPSTREAM_V4}\n")
        flags = flag_layer({"redirect_dns": True, "resolv_config_path": str(resolv_conf)})
        config = build_config({"proxy_uid": (PROXY_UID, "test")}, flags)
        lab.call(app, apply.install, config)

        def ask(name: str, how: str = "udp") -> str:
            done = lab.run(app, [sys.executable, "-c", ASK, name, how, UPSTREAM_V4], uid=APP_UID, cwd=ROOT)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        server = _server(lab, app, PROXY_UID, records)
        wait_until(lambda: ask("backend.mesh") == "NOERROR 240.0.0.3", timeout=10, what="the redirect")
        assert ask("backend.mesh", "tcp") == "NOERROR 240.0.0.3"  # TCP port 53 is redirected too
        assert ask("nope.mesh") == "NXDOMAIN"
        assert ask("example.test") == "NOERROR 192.0.2.10"  # forwarded by UID 5678: not redirected
        assert ask("example.test", "tcp") == "NOERROR 192.0.2.10"
        assert _stats(server)["loops"] == 0
        _stop(server)

        # Under a UID the rules do not exempt, the server's forwarded query comes back to it: dropped
        # once, not forwarded again and again. (Its answers do not reach the app either: the
        # conntrack-zone rules return the proxy UID's answers only. The agent must run as that UID.)
        server = _server(lab, app, OTHER_UID, records)
        assert ask("example.test").startswith("ERROR")
        stats = wait_until(lambda: _loops_seen(server), timeout=5, what="the loop seen")
        assert stats["loops"] == 1 and stats["forwarded"] == 1
        _stop(server)


def _server(lab: NetnsLab, namespace: str, uid: int, records: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "tests.support.dns_lab", "serve", "--port", "15053",
            "--upstream", f"{UPSTREAM_V4}:53", "--records", str(records)]  # fmt: skip
    proc = lab.popen(namespace, argv, uid=uid, cwd=ROOT, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    assert first == "15053", first + (proc.stdout.read() if proc.poll() is not None else "")
    return proc


def _stats(proc: subprocess.Popen[str]) -> dict:
    assert proc.stdout is not None
    return json.loads(proc.stdout.readline())  # the next report (one every 0.2 s)


def _loops_seen(proc: subprocess.Popen[str]) -> dict | None:
    stats = _stats(proc)
    return stats if stats["loops"] and not stats["upstream_failures"] < stats["forwarded"] else None


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(10)


def test_agent_answers_the_real_control_planes_records() -> None:
    """The whole chain: kuma-cp allocates the VIPs and sends each transparent proxy's Envoy the
    records listener; `kuma-dp run` (as UID 5678, in its namespace) polls it and answers."""
    require_root()
    from tests.support.transparent_mesh import transparent_mesh  # noqa: PLC0415

    with transparent_mesh() as mesh:

        def ask(name: str, rdtype: str = "A") -> str:
            code = ASK.replace("port=53", "port=15053")
            done = mesh.lab.run(mesh.a.ns, [sys.executable, "-c", code, name, "udp", "127.0.0.1", rdtype],
                                uid=APP_UID, cwd=ROOT)  # fmt: skip
            return done.stdout.strip()

        vips = json.loads(mesh.kumactl("inspect", "vips", "-o", "json"))["items"]
        backend = next(item["ip"] for item in vips if item["service"] == "backend")
        wait_until(lambda: ask("backend.mesh") == f"NOERROR {backend}", timeout=10, what="backend.mesh")
        assert ask("backend.mesh", "AAAA") in (f"NOERROR ::ffff:{backend}", "NOERROR")
        assert ask("nope.mesh") == "NXDOMAIN"
