"""The agent's DNS server on loopback, for real: dnspython's client over UDP and TCP, Debian's dnsmasq
as the upstream resolver, a real Envoy serving the records as the control plane configures it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from kuma_dp import constants as c
from kuma_dp.dns.component import LIMITS
from kuma_dp.dns.records import parse_records
from kuma_dp.dns.records_source import RecordsSource
from kuma_dp.dns.resolv import Upstream
from kuma_dp.dns.server import DnsServer, Limits
from kuma_dp.dns.upstream import Forwarder
from labkit.waiting import eventually
from tests.support.dns_lab import Dnsmasq, RecordsEnvoy, records_body

RECORDS = parse_records(records_body({"backend.mesh": ["240.0.0.3"]}).encode())
FAST = Limits(max_forwards=4, udp_send_limit=1 << 16, max_tcp=3, tcp_idle_timeout=0.5, ttl=30)


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path).start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def serving(
    upstreams: list[Upstream], limits: Limits = LIMITS, timeout: float = 1.0, *side: object
) -> AsyncIterator[DnsServer]:
    server = DnsServer(("127.0.0.1", "::1"), 0, Forwarder(upstreams, timeout, 2 * timeout), limits, ipv6=True)
    server.bind()
    server.set_records(RECORDS)
    task = asyncio.create_task(server.serve(*side))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    try:
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert server.bound == []  # every socket closed


async def udp(server: DnsServer, name: str, rdtype: str = "A", where: str = "127.0.0.1", **kw: object):
    query = dns.message.make_query(name, rdtype, **kw)
    return await dns.asyncquery.udp(query, where, timeout=5, port=server.bound_port)


async def tcp(server: DnsServer, name: str, rdtype: str = "A", where: str = "127.0.0.1"):
    query = dns.message.make_query(name, rdtype)
    return await dns.asyncquery.tcp(query, where, timeout=5, port=server.bound_port)


def addresses(message: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in message.answer for rd in rrset)


async def test_mesh_names_over_udp_and_tcp_on_both_loopbacks() -> None:
    async with serving([]) as server:
        for where in ("127.0.0.1", "::1"):
            assert addresses(await udp(server, "backend.mesh", where=where)) == ["240.0.0.3"]
            assert addresses(await tcp(server, "backend.mesh", where=where)) == ["240.0.0.3"]
        assert addresses(await udp(server, "backend.mesh", "AAAA")) == ["::ffff:240.0.0.3"]
        assert (await tcp(server, "nope.mesh")).rcode() == dns.rcode.NXDOMAIN
        assert (await udp(server, "backend.mesh", "TXT")).answer == []
        assert server.stats.answered == 7 and server.stats.forwarded == 0


async def test_other_names_are_forwarded_to_dnsmasq_unchanged(dnsmasq: Dnsmasq) -> None:
    async with serving([Upstream("127.0.0.1", dnsmasq.port)]) as server:
        for send in (dns.query.udp, dns.query.tcp):
            query = dns.message.make_query("example.test", "A", use_edns=0)
            direct = await asyncio.to_thread(send, query, "127.0.0.1", 5, dnsmasq.port)
            through = await asyncio.to_thread(send, query, "127.0.0.1", 5, server.bound_port)
            assert through.id == query.id and addresses(through) == ["192.0.2.10"]
            assert through.to_wire() == direct.to_wire()  # passed back unchanged
        # a name dnsmasq does not know: its own answer (REFUSED without upstreams) comes back
        assert (await udp(server, "unknown.test")).rcode() == dns.rcode.REFUSED
        assert server.stats.forwarded == 3 and server.stats.upstream_failures == 0


async def test_truncated_udp_answers_are_asked_again_over_tcp(dnsmasq: Dnsmasq) -> None:
    async with serving([Upstream("127.0.0.1", dnsmasq.port)]) as server:
        # dnsmasq truncates UDP answers at 1232 bytes; the client takes 4096: the TCP answer fits
        full = await udp(server, "big.test", use_edns=0, payload=4096)
        assert not full.flags & dns.flags.TC and len(addresses(full)) == 120
        # a client without EDNS takes 512: the truncated answer goes back, it retries over TCP
        truncated = await udp(server, "big.test")
        assert truncated.flags & dns.flags.TC
        assert len(addresses(await tcp(server, "big.test"))) == 120


async def test_each_transport_is_forwarded_over_the_same_one(dnsmasq: Dnsmasq) -> None:
    """An upstream that only speaks TCP (a relay to dnsmasq; its UDP port is closed): TCP queries
    reach it, UDP queries do not fall back to TCP but fail."""
    relayed: list[int] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", dnsmasq.port)
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        upstream_w.write(struct.pack("!H", length) + await reader.readexactly(length))
        (length,) = struct.unpack("!H", await upstream_r.readexactly(2))
        writer.write(struct.pack("!H", length) + await upstream_r.readexactly(length))
        await writer.drain()
        relayed.append(length)
        writer.close()
        upstream_w.close()

    tcp_only = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = tcp_only.sockets[0].getsockname()[1]
    async with tcp_only, serving([Upstream("127.0.0.1", port)]) as server:
        assert addresses(await tcp(server, "example.test")) == ["192.0.2.10"] and len(relayed) == 1
        assert (await udp(server, "example.test")).rcode() == dns.rcode.SERVFAIL and len(relayed) == 1


async def test_upstream_down_is_servfail_quickly(dnsmasq: Dnsmasq) -> None:
    dnsmasq.stop()  # its port now refuses (ICMP port unreachable, RST)
    async with serving([Upstream("127.0.0.1", dnsmasq.port)]) as server:
        for ask in (udp, tcp):
            started = time.monotonic()
            assert (await ask(server, "example.test")).rcode() == dns.rcode.SERVFAIL
            assert time.monotonic() - started < 0.5
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        async with serving([Upstream(*silent.getsockname())], timeout=0.3) as server:
            started = time.monotonic()
            answer = await udp(server, "example.test")
            assert answer.rcode() == dns.rcode.SERVFAIL and 0.25 < time.monotonic() - started < 1.5
            assert server.stats.upstream_failures == 1


async def test_next_upstream_is_tried_when_the_first_is_down(dnsmasq: Dnsmasq) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    async with serving([Upstream("127.0.0.1", dead), Upstream("127.0.0.1", dnsmasq.port)]) as server:
        assert addresses(await udp(server, "example.test")) == ["192.0.2.10"]
        assert addresses(await tcp(server, "example.test")) == ["192.0.2.10"]


async def test_own_forwarded_query_coming_back_is_dropped_not_looped() -> None:
    """As when the agent runs under a UID the DNS redirect does not exempt: forwarding to itself."""
    async with serving([], timeout=0.3) as server:
        server.forwarder.upstreams = (Upstream("127.0.0.1", server.bound_port),)
        assert (await udp(server, "example.test")).rcode() == dns.rcode.SERVFAIL
        assert (await tcp(server, "example.test")).rcode() == dns.rcode.SERVFAIL
        assert server.stats.loops == 2 and server.stats.forwarded == 2  # once each, not forever


async def test_malformed_packets_and_tcp_bounds() -> None:
    async with serving([], FAST) as server:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.setblocking(False)
            raw.connect(("127.0.0.1", server.bound_port))
            for garbage in (b"", b"\x00", b"\xff" * 11, b"\x12\x34\x01\x00\x00\x01" + b"\xff" * 30):
                raw.send(garbage)
            answer = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(raw, 4096), 5))
            assert answer.id == 0x1234 and answer.rcode() == dns.rcode.FORMERR  # only the last one
        assert addresses(await udp(server, "backend.mesh")) == ["240.0.0.3"]  # still answering
        # TCP: an idle connection is closed after the idle timeout; beyond the cap, at once
        idle = [await asyncio.open_connection("127.0.0.1", server.bound_port) for _ in range(FAST.max_tcp)]
        await asyncio.sleep(0.1)
        extra_r, _ = await asyncio.open_connection("127.0.0.1", server.bound_port)
        assert await asyncio.wait_for(extra_r.read(), 1) == b"" and server.stats.tcp_refused == 1
        for reader, writer in idle:
            writer.write(b"\x00")  # half a length prefix, then nothing: a slow client
            assert await asyncio.wait_for(reader.read(), 2) == b""
        assert addresses(await tcp(server, "backend.mesh")) == ["240.0.0.3"]


async def test_forwards_beyond_the_bound_are_dropped_and_counted() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # every forward hangs on it
        silent.bind(("127.0.0.1", 0))
        async with serving([Upstream(*silent.getsockname())], FAST, timeout=0.5) as server:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                for i in range(20):
                    client.sendto(
                        dns.message.make_query(f"n{i}.test", "A").to_wire(), ("127.0.0.1", server.bound_port)
                    )
                await eventually(lambda: server.stats.udp_messages == 20, what="20 queries received")
            assert server.stats.forwarded == FAST.max_forwards and server.stats.dropped_overload == 16
            assert addresses(await udp(server, "backend.mesh")) == ["240.0.0.3"]  # local answers go on


async def test_records_follow_a_real_envoy(tmp_path: Path) -> None:
    sock = tmp_path / "kuma-dns.sock"
    envoy = RecordsEnvoy(tmp_path, sock)
    source_holder: list[RecordsSource] = []

    def source(server: DnsServer) -> RecordsSource:
        made = RecordsSource(sock, c.DNS_RECORDS_POLL_INTERVAL_S, 1.0, 1 << 20, server.set_records)
        source_holder.append(made)
        return made

    server = DnsServer(("127.0.0.1",), 0, Forwarder([], 1, 2), LIMITS, ipv6=False)
    server.bind()
    task = asyncio.create_task(server.serve(source(server).run()))
    try:
        assert (await udp(server, "backend.mesh")).rcode() == dns.rcode.SERVFAIL  # nothing yet
        envoy.start({"backend.mesh": ["240.0.0.3"], "web.mesh": ["240.0.0.4"]}, "v1")
        await eventually(lambda: _resolves(server, "web.mesh", ["240.0.0.4"]), timeout=5, what="v1 records")
        assert source_holder[0].etag == '"v1"'
        await asyncio.sleep(1.5)  # polls answered 304: nothing changes
        assert addresses(await udp(server, "backend.mesh")) == ["240.0.0.3"]
        envoy.stop()  # Envoy gone: the last records stay
        await asyncio.sleep(1.5)
        assert addresses(await udp(server, "backend.mesh")) == ["240.0.0.3"]
        envoy.start({"backend.mesh": ["240.0.0.7"], "db.mesh": ["240.0.0.8"]}, "v2")
        await eventually(
            lambda: _resolves(server, "backend.mesh", ["240.0.0.7"]), timeout=5, what="v2 records"
        )
        assert (await udp(server, "web.mesh")).rcode() == dns.rcode.NXDOMAIN
        assert addresses(await tcp(server, "db.mesh")) == ["240.0.0.8"]
    finally:
        envoy.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _resolves(server: DnsServer, name: str, expected: list[str]) -> bool:
    return addresses(await udp(server, name)) == expected
