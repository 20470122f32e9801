"""`kuma-dp run` with its DNS server, against the harness CP (tests/support/fake_control_plane.py)
whose static bootstrap also has the records listener the control plane will send (a real Envoy
serving `GET /dns` on `<workdir>/kuma-dns.sock`). Only mesh names are asked: another name would be
forwarded to this machine's real resolver. The port is a free one (KUMA_DNS_PROXY_PORT), not 15053,
which another agent on this machine may hold."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import psutil
import yaml

from labkit.lab import BIN, AgentProc, Lab
from labkit.ports import free_port
from labkit.waiting import wait_until
from tests.support.agent_process import Agent, app, cp, pki, start_agent
from tests.support.dns_lab import TRANSPARENT_DATAPLANE, bootstrap_with_records
from tests.support.fake_control_plane import FakeControlPlane

__all__ = ["app", "cp", "pki", "start_agent"]  # fixtures

StartAgent = Callable[..., Agent]
RECORDS = {"backend.mesh": ["240.0.0.3"], "my.service.mesh": ["240.0.0.4"]}


def ask(port: int, name: str, tcp: bool = False) -> dns.message.Message:
    send = dns.query.tcp if tcp else dns.query.udp
    return send(dns.message.make_query(name, "A"), "127.0.0.1", 3, port)


def addresses(message: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in message.answer for rd in rrset)


def dns_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_agent_answers_mesh_names_from_envoy(
    start_agent: StartAgent, cp: FakeControlPlane, tmp_path: Path
) -> None:
    cp.bootstrap_override = bootstrap_with_records(cp, RECORDS)
    dp_file = tmp_path / "dp.yaml"
    dp_file.write_text(TRANSPARENT_DATAPLANE)
    port = free_port()
    agent = start_agent(cp, "-d", str(dp_file), env={"KUMA_DNS_PROXY_PORT": str(port)})
    agent.wait_ready()
    wait_until(lambda: addresses(ask(port, "backend.mesh")) == ["240.0.0.3"], timeout=5, what="records")
    assert addresses(ask(port, "backend.mesh", tcp=True)) == ["240.0.0.3"]
    assert addresses(ask(port, "My.Service.mesh")) == ["240.0.0.4"]
    assert ask(port, "nope.mesh").rcode() == dns.rcode.NXDOMAIN
    assert ask(port, "nope.mesh", tcp=True).rcode() == dns.rcode.NXDOMAIN

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:  # a burst: 20,000 queries
        client.setblocking(False)
        wire = dns.message.make_query("backend.mesh", "A").to_wire()
        for _ in range(20_000):
            try:
                client.sendto(wire, ("127.0.0.1", port))
            except BlockingIOError:
                time.sleep(0.001)
    time.sleep(1)
    assert addresses(ask(port, "backend.mesh")) == ["240.0.0.3"]
    rss_mib = psutil.Process(agent.proc.pid).memory_info().rss / 2**20
    print(f"agent RSS with DNS, after 20,000 queries: {rss_mib:.1f} MiB")
    assert rss_mib <= 40

    log = agent.log()
    dns_lines = [line for line in log.splitlines() if "\tdns\t" in line]
    assert len(dns_lines) == 1 and f"DNS on 127.0.0.1:{port}" in dns_lines[0] and "\tINFO\t" in dns_lines[0]
    assert "Traceback" not in log  # (the harness CP has no /certificate: that WARN is expected)
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert dns_port_free(port)  # stopped cleanly, sockets closed


def test_taken_port_stops_the_start_naming_the_settings(
    start_agent: StartAgent, cp: FakeControlPlane, tmp_path: Path
) -> None:
    dp_file = tmp_path / "dp.yaml"
    dp_file.write_text(TRANSPARENT_DATAPLANE)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        agent = start_agent(cp, "-d", str(dp_file), "--dns-coredns-port", str(port))
        assert agent.wait_exit() == 1
    log = agent.log()
    assert (
        f"Error: cannot listen for DNS on UDP 127.0.0.1:{port} (port {port}: from --dns-coredns-port): "
        "Address already in use; choose another port with --dns-coredns-port or KUMA_DNS_PROXY_PORT "
        "(and redirect DNS to it), or turn the DNS server off with --dns-enabled=false "
        "(KUMA_DNS_ENABLED=false)"
    ) in log
    assert "Traceback" not in log
    assert cp.requests == []  # before the bootstrap: nothing else started


def test_dns_off_or_not_transparent_leaves_the_port_alone(
    start_agent: StartAgent, cp: FakeControlPlane, tmp_path: Path
) -> None:
    transparent, plain = tmp_path / "tp.yaml", tmp_path / "plain.yaml"
    transparent.write_text(TRANSPARENT_DATAPLANE)
    plain.write_text(TRANSPARENT_DATAPLANE.replace("web-1", "web-2").split("  transparentProxying")[0])
    port = free_port()
    for args in (["-d", str(transparent), "--dns-enabled=false"], ["-d", str(plain)]):
        agent = start_agent(cp, *args, env={"KUMA_DNS_PROXY_PORT": str(port)})
        agent.wait_ready()
        assert dns_port_free(port)
        assert "DNS" not in agent.log()
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit() == 0


def test_a_dataplane_given_by_name_gets_dns_once_the_control_plane_says_it_is_transparent(
    lab: Lab,
) -> None:
    """`kumactl apply` of a transparent Dataplane, then `kuma-dp run --name` (no resource): the
    real control plane's bootstrap answer says `isUsingTransparentProxy`, so the agent starts its
    DNS server and answers the mesh's names from the records the control plane sends."""
    cp = lab.start_control_plane()
    lab.wait_control_plane(cp)
    doc = {
        "type": "Dataplane", "mesh": "default", "name": "web-1",
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": free_port(), "tags": {"kuma.io/service": "web"}}],
            "transparentProxying": {"redirectPortInbound": free_port(), "redirectPortOutbound": free_port()},
        },
    }  # fmt: skip
    applied = lab.kumactl(cp, "apply", "-f", "-", input=yaml.safe_dump(doc))
    assert applied.returncode == 0, applied.stderr
    port, readiness = free_port(), free_port()
    argv = [
        str(BIN / "kuma-dp"), "run", "--name", "web-1", "--mesh", "default",
        "--cp-address", cp.dp_url, "--ca-cert-file", str(cp.ca_cert),
        "--dataplane-token-file", str(lab.dataplane_token(cp, "web-1")),
        "--work-dir", str(lab.root / "web-1-dp"),
    ]  # fmt: skip
    proc = lab.spawn(
        "web-1-dp", argv, {"KUMA_READINESS_PORT": str(readiness), "KUMA_DNS_PROXY_PORT": str(port)}
    )
    agent = AgentProc(proc, "web-1", lab.root / "web-1-dp", readiness)
    lab.wait_ready(agent)
    vips = json.loads(lab.kumactl(cp, "inspect", "vips", "-o", "json").stdout)["items"]
    web = next(item["ip"] for item in vips if item["service"] == "web")

    def answered() -> list[str]:
        try:
            return addresses(ask(port, "web.mesh"))
        except (dns.exception.Timeout, OSError):
            return []

    assert wait_until(answered, timeout=10, what="web.mesh from the agent") == [web]
