"""Service names end to end, every part real: namespaces as hosts, `kuma-cp run` (SQLite store) on
host a, `kumactl install transparent-proxy` on a (with `--redirect-dns`) and b, `kuma-dp run` on
each, an app on each, and Debian's dnsmasq as host a's resolver in a namespace of its own. A user
process on host a resolves `backend.mesh` with the system's resolver and reaches backend by that
name, through both Envoys, with mTLS; other names still resolve through dnsmasq, over UDP and TCP;
names follow the services (a new one within 2 s, a gone one after the grace period) and their VIPs
survive a control-plane restart.

Needs root (namespaces, iptables) and dnsmasq; skipped without root, but fails when CI=true.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import sys
import time
from collections.abc import Iterator

import pytest
import yaml

from labkit.lab import ALLOW_ALL_PERMISSION
from labkit.waiting import wait_until
from tests.support.dns_lab import require_dnsmasq
from tests.support.netns_lab import require_root
from tests.support.transparent_mesh import (
    APP_PORT,
    UNDECLARED_PORT,
    USER_UID,
    TransparentMesh,
    transparent_mesh,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

GRACE_S = 3
VIPS = ipaddress.ip_network("240.0.0.0/4")
# A DNS query as the application would send it (UID 1000, to its resolver), printing rcode and
# answers; argv: name, udp|tcp, server, type.
ASK = """
import sys, dns.message, dns.query, dns.rcode
name, how, server, rdtype = sys.argv[1:5]
send = dns.query.tcp if how == "tcp" else dns.query.udp
answer = send(dns.message.make_query(name, rdtype), server, timeout=5, port=53)
print(dns.rcode.to_text(answer.rcode()), " ".join(sorted(rd.to_text() for r in answer.answer for rd in r)))
"""


class NamedMesh:
    def __init__(self, mesh: TransparentMesh, resolver_ip: str) -> None:
        self.mesh, self.resolver_ip = mesh, resolver_ip

    def getent(self, name: str) -> list[str]:
        """The addresses the system's resolver gives an application on host a (empty: none)."""
        res = self.mesh.lab.run(self.mesh.a.ns, ["getent", "ahostsv4", name], uid=USER_UID)
        return sorted({line.split()[0] for line in res.stdout.splitlines()})

    def ask(self, name: str, how: str = "udp", rdtype: str = "A") -> str:
        argv = [sys.executable, "-c", ASK, name, how, self.resolver_ip, rdtype]
        res = self.mesh.lab.run(self.mesh.a.ns, argv, uid=USER_UID)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def vips(self) -> dict[str, str]:
        body = json.loads(self.mesh.kumactl("inspect", "vips", "-o", "json"))
        return {item["service"]: item["ip"] for item in body["items"]}


def add_resolver_and_routes(mesh: TransparentMesh) -> str:
    """dnsmasq in a namespace of its own, host a's only resolver and its default gateway (as any VM
    or pod has one: a connect() to a VIP then reaches iptables instead of failing with "network
    unreachable", and what the proxy lets through is dropped there as by a real gateway). Returns
    the resolver's address."""
    lab = mesh.lab
    resolver = lab.namespace()
    subnet = f"10.253.{secrets.randbelow(250) + 1}"
    lab.veth(mesh.a.ns, f"{subnet}.1/24", resolver, f"{subnet}.2/24")
    hosts = mesh.root / "resolver.hosts"
    hosts.write_text("192.0.2.10 example.test\n")
    hosts.chmod(0o644)
    argv = [
        require_dnsmasq(), "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file", "--no-resolv",
        "--no-hosts", f"--addn-hosts={hosts}", f"--listen-address={subnet}.2", "--bind-interfaces",
        "--port=53", "--user=root",
    ]  # fmt: skip
    lab.popen(resolver, argv)
    lab.resolv_conf(mesh.a.ns, f"nameserver {subnet}.2\n")
    lab.run(mesh.a.ns, ["ip", "route", "add", "default", "via", f"{subnet}.2"], check=True)
    return f"{subnet}.2"


@pytest.fixture
def named() -> Iterator[NamedMesh]:
    require_root()
    require_dnsmasq()
    found: list[str] = []
    cp_env = {"KUMA_STORE_TYPE": "sqlite", "KUMA_DNS_SERVER_VIP_RELEASE_GRACE_PERIOD": f"{GRACE_S}s"}
    with transparent_mesh(
        cp_env=cp_env,
        prepare=lambda mesh: found.append(add_resolver_and_routes(mesh)),
        a_flags=("--redirect-dns",),
    ) as mesh:
        named = NamedMesh(mesh, found[0])
        wait_until(lambda: named.getent("backend.mesh"), timeout=10, what="backend.mesh resolving on host a")
        yield named


def test_apps_call_backend_by_name_through_both_envoys_and_other_names_still_resolve(
    named: NamedMesh,
) -> None:
    mesh = named.mesh
    (vip,) = named.getent("backend.mesh")
    assert ipaddress.ip_address(vip) in VIPS and named.vips()["backend"] == vip
    # `getent hosts` asks for IPv6 first: the namespace has IPv6 (link-local), so the answer is the
    # VIP's IPv4-mapped form, which connects over IPv4 (the redirect catches it).
    hosts = mesh.lab.run(mesh.a.ns, ["getent", "hosts", "backend.mesh"], uid=USER_UID).stdout.split()
    assert hosts[1:] == ["backend.mesh"] and hosts[0].removeprefix("::ffff:") == vip, hosts
    assert named.getent("web.mesh") == [named.vips()["web"]]
    for url in ("http://backend.mesh/", f"http://backend.mesh:{APP_PORT}/"):
        # Delivered by b's Envoy to b's app (from 127.0.0.6), after a's Envoy picked backend.
        wait_until(lambda url=url: f"peer=127.0.0.6 port={APP_PORT}" in mesh.get(url), timeout=10)

    # Names outside the mesh: answered by dnsmasq in its own namespace, through the agent.
    assert named.getent("example.test") == ["192.0.2.10"]
    assert named.ask("example.test", "tcp") == "NOERROR 192.0.2.10"
    assert named.ask("backend.mesh", "tcp") == f"NOERROR {vip}"
    assert named.ask("nothing-here.mesh").startswith("NXDOMAIN")
    assert named.getent("nothing-here.mesh") == []

    backend = {"name": "ca-1", "type": "builtin"}
    mtls_on = {"type": "Mesh", "name": "default", "mtls": {"enabledBackend": "ca-1", "backends": [backend]}}
    mesh.kumactl("apply", "-f", "-", stdin=yaml.safe_dump(mtls_on) + "---" + ALLOW_ALL_PERMISSION)
    wait_until(lambda: "URI=spiffe://default/web" in mesh.get("http://backend.mesh/"), timeout=10)
    assert "URI=spiffe://default/web" in mesh.get(f"http://backend.mesh:{APP_PORT}/")


def dataplane(name: str, service: str, address: str, port: int) -> str:
    inbound = [{"port": port, "tags": {"kuma.io/service": service}}]
    doc = {
        "type": "Dataplane",
        "mesh": "default",
        "name": name,
        "networking": {"address": address, "inbound": inbound},
    }
    return yaml.safe_dump(doc)


def refused_at_once(mesh: TransparentMesh, url: str) -> bool:
    started = time.monotonic()
    failed = mesh.curl(mesh.a, url, uid=USER_UID).returncode != 0
    return failed and time.monotonic() - started < 1


def test_names_follow_services_and_their_vips_survive_a_restart(named: NamedMesh) -> None:
    mesh = named.mesh
    before = named.vips()

    # A new service's name resolves within 2 s of its first Dataplane.
    started = time.monotonic()
    mesh.kumactl("apply", "-f", "-", stdin=dataplane("db-1", "db", mesh.b.ip, UNDECLARED_PORT))
    (db_vip,) = wait_until(lambda: named.getent("db.mesh"), timeout=2, what="db.mesh within 2 s")
    print(f"db.mesh resolved {time.monotonic() - started:.2f} s after its Dataplane was applied")
    assert db_vip not in before.values()
    wait_until(
        lambda: f"port={UNDECLARED_PORT}" in mesh.get(f"http://db.mesh:{UNDECLARED_PORT}/"), timeout=10
    )

    # The VIPs live in the store: a restarted control plane gives every service the same address,
    # and the agents get them from it (a service created after the restart shows they reconnected).
    mesh.restart_control_plane()
    mesh.kumactl("apply", "-f", "-", stdin=dataplane("cache-1", "cache", mesh.b.ip, 6379))
    wait_until(lambda: named.getent("cache.mesh"), timeout=30, what="cache.mesh after the restart")
    assert {s: named.vips()[s] for s in before} == before
    assert named.getent("backend.mesh") == [before["backend"]] and named.getent("db.mesh") == [db_vip]

    # Its last instance gone, a service keeps its name for the grace period, then loses it.
    mesh.kumactl("delete", "dataplane", "db-1")
    gone = time.monotonic()
    assert named.getent("db.mesh") == [db_vip]
    # Meanwhile a call to it is refused by the proxy at once rather than left hanging on the VIP.
    wait_until(lambda: refused_at_once(mesh, "http://db.mesh/"), timeout=GRACE_S - 1, what="db.mesh refused")
    assert "releaseAfter" in next(
        i for i in json.loads(mesh.kumactl("inspect", "vips", "-o", "json"))["items"] if i["service"] == "db"
    )
    wait_until(
        lambda: named.ask("db.mesh").startswith("NXDOMAIN"), timeout=GRACE_S + 5, what="db.mesh released"
    )
    assert time.monotonic() - gone >= GRACE_S - 0.5
    assert "db" not in named.vips() and named.getent("backend.mesh") == [before["backend"]]
