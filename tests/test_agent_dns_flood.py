"""The DNS server under a flood: tens of thousands of garbage and valid packets at its UDP port, in a
process of its own (so its RSS is its own), with dnsmasq as the upstream of the forwarded ones."""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import psutil
import pytest

from tests.support.dns_lab import Dnsmasq, ServerProcess, records_body

GARBAGE = 30_000
MESH = 20_000
FORWARDED = 10_000
RSS_GROWTH_LIMIT_MB = 6.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("upstream_kind", ["dnsmasq", "silent"])
def test_flood_keeps_memory_bounded_and_answers_after(tmp_path: Path, upstream_kind: str) -> None:
    """With dnsmasq answering, and with an upstream that never answers (every forward waits its
    full timeout: without the bound on forwards in flight, they would pile up)."""
    upstream = Dnsmasq(tmp_path).start()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    upstream_port = upstream.port if upstream_kind == "dnsmasq" else silent.getsockname()[1]
    records = tmp_path / "records.json"
    records.write_text(records_body({"backend.mesh": ["240.0.0.3"]}))
    server = ServerProcess(tmp_path, "--upstream", f"127.0.0.1:{upstream_port}", "--records", str(records))
    forwarded_rcode = dns.rcode.NOERROR if upstream_kind == "dnsmasq" else dns.rcode.SERVFAIL
    try:
        _answers_everything(server.port, forwarded_rcode)
        _flood(server.port, GARBAGE // 10, MESH // 10, FORWARDED // 10)  # warm up: arenas, task objects
        time.sleep(1.5)
        process = psutil.Process(server.proc.pid)
        before = process.memory_info().rss / 2**20
        peak = _flood(server.port, GARBAGE, MESH, FORWARDED, process)
        time.sleep(2.5)  # forwards in flight finish (each at most 2 s)
        after = process.memory_info().rss / 2**20
        stats = server.stats()
        print(f"RSS before {before:.1f} MiB, peak {peak:.1f}, after {after:.1f}; {stats}")
        assert peak - before <= RSS_GROWTH_LIMIT_MB and after - before <= RSS_GROWTH_LIMIT_MB
        received = stats["udp_messages"]
        assert received > (GARBAGE + MESH + FORWARDED) // 10  # most of the flood got in
        assert stats["malformed"] > 0 and stats["answered"] > 0 and stats["forwarded"] > 0
        if upstream_kind == "silent":
            assert stats["dropped_overload"] > 0 and stats["upstream_failures"] > 0
        _answers_everything(server.port, forwarded_rcode)  # and it keeps answering, everything
        assert server.proc.poll() is None
    finally:
        server.stop()
        upstream.stop()
        silent.close()


def _flood(port: int, garbage: int, mesh: int, forwarded: int, watch: psutil.Process | None = None) -> float:
    """Send the packets interleaved from 4 sockets without reading the answers; the peak RSS seen."""
    rng = random.Random(14)
    kinds = ["g"] * garbage + ["m"] * mesh + ["f"] * forwarded
    rng.shuffle(kinds)
    mesh_wire = dns.message.make_query("backend.mesh", "A").to_wire()
    peak = 0.0
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for client in clients:
            client.setblocking(False)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers are not read
        for i, kind in enumerate(kinds):
            if kind == "g":
                packet = os.urandom(rng.randrange(0, 600))
            elif kind == "m":
                packet = mesh_wire
            else:
                packet = dns.message.make_query(rng.choice(["example.test", "other.test"]), "A").to_wire()
            try:
                clients[i % 4].sendto(packet, ("127.0.0.1", port))
            except BlockingIOError:
                time.sleep(0.001)
            if watch is not None and i % 5000 == 0:
                peak = max(peak, watch.memory_info().rss / 2**20)
    finally:
        for client in clients:
            client.close()
    return max(peak, watch.memory_info().rss / 2**20) if watch is not None else 0.0


def _answers_everything(port: int, forwarded_rcode: int) -> None:
    mesh = dns.query.udp(dns.message.make_query("backend.mesh", "A"), "127.0.0.1", 3, port)
    assert [rd.to_text() for rrset in mesh.answer for rd in rrset] == ["240.0.0.3"]
    mesh_tcp = dns.query.tcp(dns.message.make_query("backend.mesh", "A"), "127.0.0.1", 3, port)
    assert mesh_tcp.rcode() == dns.rcode.NOERROR and mesh_tcp.answer
    other = dns.query.udp(dns.message.make_query("example.test", "A"), "127.0.0.1", 5, port)
    assert other.rcode() == forwarded_rcode
    if forwarded_rcode == dns.rcode.NOERROR:
        assert [rd.to_text() for rrset in other.answer for rd in rrset] == ["192.0.2.10"]
    assert dns.query.udp(dns.message.make_query("nope.mesh", "A"), "127.0.0.1", 3, port).rcode() == 3
