"""Forwarding a query to the upstream resolvers, over the transport the client used.

UDP queries go out over UDP, one fresh connected socket per query (a random source port, and the
kernel drops datagrams from anyone but the upstream); an answer with TC set is asked again over
TCP, and that answer is used if it fits the client's UDP size (else the truncated one goes back,
so the client retries over TCP itself). TCP queries go out over TCP. The query bytes are sent
unchanged and the upstream's answer comes back unchanged (the client's id included).

Upstreams are tried in order: each for at most `upstream_timeout`, the whole query for at most
`deadline`; a refused one (ICMP port unreachable, RST) is skipped at once. None means no upstream
answered: the caller answers SERVFAIL.

Every socket is made by the agent process itself, so its packets carry the agent's UID: the
iptables rules exempt the proxy's UID (5678, which the agent runs as) from the DNS redirect, so
they reach the upstream instead of coming back here. `local_ports` lists the ports of the sockets
in flight, so that the server can recognise its own query coming back when the agent runs under
another UID, and drop it rather than loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Sequence

from kuma_dp.dns.answers import Forward, is_truncated, matches
from kuma_dp.dns.resolv import Upstream

log = logging.getLogger("dns")
_MAX_MESSAGE = 65535
_FAILURES = (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError)


class Forwarder:
    def __init__(self, upstreams: Sequence[Upstream], upstream_timeout: float, deadline: float) -> None:
        self.upstreams = tuple(upstreams)
        self.upstream_timeout = upstream_timeout
        self.deadline = deadline
        self.local_ports: set[int] = set()

    async def forward(self, query: Forward, udp: bool) -> bytes | None:
        """The first upstream's answer to `query`, or None when none answered in time."""
        give_up = time.monotonic() + self.deadline
        for upstream in self.upstreams:
            try:
                async with asyncio.timeout(self._budget(give_up)):
                    answer = await (self._udp(upstream, query) if udp else self._tcp(upstream, query))
            except _FAILURES as exc:
                log.debug("upstream %s: %s", upstream.describe(), _describe(exc))
                continue
            if udp and is_truncated(answer):
                return await self._after_truncation(upstream, query, answer, give_up)
            return answer
        return None

    def _budget(self, give_up: float) -> float:
        return max(0.0, min(self.upstream_timeout, give_up - time.monotonic()))

    async def _udp(self, upstream: Upstream, query: Forward) -> bytes:
        loop = asyncio.get_running_loop()
        with socket.socket(upstream.family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect((upstream.host, upstream.port))
            port = sock.getsockname()[1]
            self.local_ports.add(port)
            try:
                await loop.sock_sendall(sock, query.wire)
                while True:  # anything that is not the answer (a late one to an earlier id) is skipped
                    answer = await loop.sock_recv(sock, _MAX_MESSAGE)
                    if matches(answer, query.wire, query.question):
                        return answer
            finally:
                self.local_ports.discard(port)

    async def _after_truncation(
        self, upstream: Upstream, query: Forward, answer: bytes, give_up: float
    ) -> bytes:
        """The full answer over TCP if the client can take it over UDP, else the truncated one."""
        try:
            async with asyncio.timeout(self._budget(give_up)):
                full = await self._tcp(upstream, query)
        except _FAILURES as exc:
            log.debug("upstream %s over TCP after truncation: %s", upstream.describe(), _describe(exc))
            return answer
        return full if len(full) <= query.max_udp else answer

    async def _tcp(self, upstream: Upstream, query: Forward) -> bytes:
        sock = socket.socket(upstream.family, socket.SOCK_STREAM)
        port = -1
        try:
            sock.setblocking(False)
            sock.bind(("::" if upstream.family == socket.AF_INET6 else "0.0.0.0", 0))
            port = sock.getsockname()[1]  # known before connecting: the server may see it arrive first
            self.local_ports.add(port)
            await asyncio.get_running_loop().sock_connect(sock, (upstream.host, upstream.port))
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            self.local_ports.discard(port)
            sock.close()
            raise
        try:
            writer.write(struct.pack("!H", len(query.wire)) + query.wire)
            await writer.drain()
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                answer = await reader.readexactly(length)
                if matches(answer, query.wire, query.question):
                    return answer
        finally:
            self.local_ports.discard(port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"
