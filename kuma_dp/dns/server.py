"""The DNS server's sockets: UDP and TCP on loopback, each message decided by `answers.handle`.

Bounds, so that a flood costs CPU but never memory, and the server keeps answering:
- local answers are computed at once, in the datagram callback (no queue at all);
- forwarded queries in flight are capped (`max_forwards`): a UDP query beyond it is dropped, a TCP
  one answered SERVFAIL; both counted in `stats`;
- a UDP answer is dropped when the kernel has not taken `udp_send_limit` bytes of earlier ones;
- TCP connections are capped (`max_tcp`; beyond, closed at once), each closed when no complete
  query arrives for `tcp_idle_timeout` (slow writers included) or its reader stops reading.
Whatever the kernel's receive buffer cannot hold is dropped by the kernel.

`bind()` takes the ports (so a taken port is reported before anything else starts); `serve()`
runs until cancelled and owns every task it starts (one TaskGroup).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import cast

from kuma_dp.dns.answers import AnswerCache, Drop, Forward, Reply, handle, servfail_for
from kuma_dp.dns.records import Records
from kuma_dp.dns.upstream import Forwarder

log = logging.getLogger("dns")
_MAX_MESSAGE = 65535
_CACHE_SIZE = 1024
_LOOP_HINT = (
    "a query this agent forwarded came back to it: its DNS is redirected to itself. Run kuma-dp as "
    "the proxy's UID (the one the transparent proxy exempts, 5678 by default)"
)


class BindError(OSError):
    """A port could not be taken; `where` says which (e.g. "UDP 127.0.0.1:15053")."""

    def __init__(self, where: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.where = where


@dataclass(frozen=True)
class Limits:
    max_forwards: int
    udp_send_limit: int
    max_tcp: int
    tcp_idle_timeout: float
    ttl: int


@dataclass
class DnsStats:
    udp_messages: int = 0
    tcp_messages: int = 0
    answered: int = 0  # here, from the records (NOERROR, NXDOMAIN, and SERVFAIL before any record)
    forwarded: int = 0
    upstream_failures: int = 0  # forwarded, no upstream answered: SERVFAIL
    malformed: int = 0  # dropped, or answered FORMERR / NOTIMP
    dropped_overload: int = 0  # forwards beyond max_forwards, answers beyond udp_send_limit
    tcp_refused: int = 0  # connections beyond max_tcp
    loops: int = 0  # our own forwarded queries that came back
    rcodes: dict[int, int] = field(default_factory=dict)  # of the answers made (not the cached)


class DnsServer:
    def __init__(
        self,
        addresses: Sequence[str],
        port: int,
        forwarder: Forwarder,
        limits: Limits,
        ipv6: bool,
    ) -> None:
        self.addresses = tuple(addresses)
        self.port = port
        self.forwarder = forwarder
        self.limits = limits
        self.ipv6 = ipv6
        self.records: Records | None = None
        self.stats = DnsStats()
        self._udp: list[socket.socket] = []
        self._tcp: list[socket.socket] = []
        self._tasks: asyncio.TaskGroup | None = None
        self._forwards = 0
        self._tcp_open = 0
        self._cache = AnswerCache(_CACHE_SIZE)  # UDP answers only: TCP ones differ (no truncation)
        self.bound_port = port  # the port taken (the kernel's pick when `port` is 0)

    def set_records(self, records: Records) -> None:
        self.records = records
        self._cache.clear()

    @property
    def bound(self) -> list[str]:
        return [_describe_address(s.getsockname()) for s in self._udp]

    def bind(self) -> None:
        """Take UDP and TCP on every address (BindError naming the first that failed). An IPv6
        address is skipped when the host has no IPv6 at all. Port 0 (tests): one free port for all."""
        attempts = 5 if self.port == 0 else 1
        for attempt in range(attempts):
            try:
                self._bind_all()
                return
            except BindError:
                self.close()
                if attempt == attempts - 1:
                    raise

    def _bind_all(self) -> None:
        port = self.port
        for address in self.addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            try:
                udp = _bound(family, socket.SOCK_DGRAM, address, port)
            except BindError as exc:
                if family == socket.AF_INET6 and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    continue
                raise
            self._udp.append(udp)
            port = udp.getsockname()[1]
            self._tcp.append(_bound(family, socket.SOCK_STREAM, address, port))
        self.bound_port = port

    def close(self) -> None:
        for sock in self._udp + self._tcp:
            sock.close()
        self._udp, self._tcp = [], []

    async def serve(self, *side: Awaitable[None]) -> None:
        """Answer until cancelled; `side` (the records source) runs alongside, owned here too."""
        loop = asyncio.get_running_loop()
        transports: list[asyncio.DatagramTransport] = []
        servers: list[asyncio.Server] = []
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                for work in side:
                    tasks.create_task(work)
                for sock in self._udp:
                    transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=sock)
                    transports.append(transport)
                for sock in self._tcp:
                    servers.append(await asyncio.start_server(self._accept, sock=sock, limit=_MAX_MESSAGE))
                await loop.create_future()  # until cancelled
        finally:
            self._tasks = None
            for transport in transports:
                transport.close()
            for server in servers:
                server.close()
            self.close()

    # --- UDP ------------------------------------------------------------------------------------

    def udp_message(self, transport: asyncio.DatagramTransport, data: bytes, addr: tuple) -> None:
        self.stats.udp_messages += 1
        if addr[1] in self.forwarder.local_ports:
            self._loop_detected()
            return
        cached = self._cache.get(data)
        if cached is not None:
            self.stats.answered += 1
            self._send(transport, cached, addr)
            return
        outcome = handle(data, self.records, self.ipv6, self.limits.ttl, udp=True)
        if isinstance(outcome, Forward):
            if not self._take_forward_slot():
                return
            assert self._tasks is not None
            self._tasks.create_task(self._forward_udp(transport, outcome, addr))
            return
        self._count(outcome)
        if isinstance(outcome, Reply):
            self._cache.put(data, outcome)
            self._send(transport, outcome.wire, addr)

    async def _forward_udp(self, transport: asyncio.DatagramTransport, query: Forward, addr: tuple) -> None:
        try:
            answer = await self._forwarded(query, udp=True)
        finally:
            self._forwards -= 1
        if answer is not None and not transport.is_closing():
            self._send(transport, answer, addr)

    def _send(self, transport: asyncio.DatagramTransport, wire: bytes, addr: tuple) -> None:
        if transport.get_write_buffer_size() > self.limits.udp_send_limit:
            self.stats.dropped_overload += 1
            return
        transport.sendto(wire, addr)

    # --- TCP ------------------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._tasks is None or self._tcp_open >= self.limits.max_tcp:
            self.stats.tcp_refused += 1
            writer.transport.abort()
            return
        if peer and peer[1] in self.forwarder.local_ports:
            self._loop_detected()
            writer.transport.abort()
            return
        self._tcp_open += 1
        self._tasks.create_task(self._tcp_session(reader, writer))

    async def _tcp_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(self.limits.tcp_idle_timeout):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(length)
                answer = await self._tcp_answer(data)
                if answer is None:
                    break
                async with asyncio.timeout(self.limits.tcp_idle_timeout):
                    writer.write(struct.pack("!H", len(answer)) + answer)
                    await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # idle, gone, or not reading: close
        finally:
            self._tcp_open -= 1
            writer.transport.abort()

    async def _tcp_answer(self, data: bytes) -> bytes | None:
        """The answer to one TCP message; None closes the connection (nothing sensible to say)."""
        self.stats.tcp_messages += 1
        outcome = handle(data, self.records, self.ipv6, self.limits.ttl, udp=False)
        if not isinstance(outcome, Forward):
            self._count(outcome)
            return outcome.wire if isinstance(outcome, Reply) else None
        if not self._take_forward_slot():
            return servfail_for(data)
        try:
            return await self._forwarded(outcome, udp=False)
        finally:
            self._forwards -= 1

    # --- shared ---------------------------------------------------------------------------------

    def _take_forward_slot(self) -> bool:
        if self._tasks is None or self._forwards >= self.limits.max_forwards:
            self.stats.dropped_overload += 1
            return False
        self._forwards += 1
        return True

    async def _forwarded(self, query: Forward, udp: bool) -> bytes | None:
        self.stats.forwarded += 1
        try:
            answer = await self.forwarder.forward(query, udp)
        except Exception as exc:  # a bug here must cost one query, never the server
            log.debug("forwarding failed: %s: %s", type(exc).__name__, exc)
            answer = None
        if answer is None:
            self.stats.upstream_failures += 1
            return servfail_for(query.wire)
        return answer

    def _count(self, outcome: Reply | Drop) -> None:
        if isinstance(outcome, Drop):
            self.stats.malformed += 1
            return
        rcodes = self.stats.rcodes
        rcodes[outcome.rcode] = rcodes.get(outcome.rcode, 0) + 1
        if outcome.rcode in (1, 4):  # FORMERR, NOTIMP
            self.stats.malformed += 1
        else:
            self.stats.answered += 1

    def _loop_detected(self) -> None:
        self.stats.loops += 1
        if self.stats.loops == 1:
            log.warning("%s", _LOOP_HINT)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # asyncio's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        assert self.transport is not None
        self.server.udp_message(self.transport, data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP: %s", exc)  # e.g. ICMP unreachable for an answer to a client gone


def _bound(family: socket.AddressFamily, kind: socket.SocketKind, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:  # never for UDP: it would let a second server share the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        proto = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
        raise BindError(f"{proto} {_describe_address((address, port))}", exc) from None
    return sock


def _describe_address(sockname: tuple) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
