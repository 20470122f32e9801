"""One TLS port for the bootstrap API and ADS, as Kuma serves them on 5678.

The front terminates TLS and routes each connection by the ALPN protocol the client negotiated:
`h2` (Envoy's gRPC ADS client) goes to the gRPC server, anything else (the agent's HTTP/1.1
bootstrap and identity calls) to the HTTP app. Both backends listen on Unix sockets in a private
directory, so nothing but the front is reachable from the network.

The front also bounds what clients may hold (docs/security.md, DpServerLimits): connections in
all and per source address (refused before the TLS handshake), the time to send the first
request head (HTTP/1.1) or connection preface (HTTP/2) after connecting, and an idle timeout
(no byte either way). Request bodies are bounded by the HTTP app (control_plane/http_limits.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
from asyncio import sslproto
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from control_plane.config import DpServerLimits

log = logging.getLogger("kuma-cp.dp-server")

_CHUNK = 64 * 1024
_TLS_HANDSHAKE_TIMEOUT_S = 10.0
_REFUSAL_LOG_INTERVAL_S = 10.0
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_MAX_HEAD_BYTES = 64 * 1024  # uvicorn refuses heads over 16 KiB anyway; we only look for the end
# asyncio gives every TLS connection a read buffer of SSLProtocol.max_size (256 KiB), zero-filled
# up front: 256 MB for 1,000 connected proxies. TLS records are at most 16 KiB, so 32 KiB reads lose
# nothing. Set once for the control-plane process, which terminates TLS only here.
_TLS_READ_BUFFER = 32 * 1024


@dataclass(frozen=True)
class Backends:
    grpc_socket: Path  # h2 connections
    http_socket: Path  # everything else


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


class TlsFront:
    def __init__(
        self, backends: Backends, ssl_context: ssl.SSLContext, limits: DpServerLimits | None = None
    ) -> None:
        self._backends = backends
        self._ssl = ssl_context
        self._limits = limits or DpServerLimits()
        self._connections: set[asyncio.Task[None]] = set()
        self._per_source: Counter[str] = Counter()
        self._refused = 0
        self._refusal_logged_at = float("-inf")
        # Each backend connection comes from its own Unix address, so a backend can name the
        # client connection it wants closed (close_peer): gRPC reports it as the call's peer.
        self._by_local_address: dict[str, asyncio.Task[None]] = {}
        self._serial = itertools.count(1)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def close_peer(self, peer: str) -> bool:
        """Close the client connection behind the backend peer `peer` (`unix:<address>`)."""
        task = self._by_local_address.get(peer.removeprefix("unix:"))
        if task is None:
            return False
        task.cancel()
        return True

    async def serve(self, host: str | None, port: int, started: asyncio.Event | None = None) -> None:
        """Accept until cancelled; then close every spliced connection."""
        sslproto.SSLProtocol.max_size = min(sslproto.SSLProtocol.max_size, _TLS_READ_BUFFER)
        # TLS is started per connection (start_tls), after the connection limits are checked.
        server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        try:
            if started is not None:
                started.set()
            await asyncio.Event().wait()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) else "?"
        refusal = self._refusal(source)
        if refusal:
            self._log_refusal(source, refusal)
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._per_source[source] += 1
        try:
            await writer.start_tls(self._ssl, ssl_handshake_timeout=_TLS_HANDSHAKE_TIMEOUT_S)
            await self._route(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.debug("connection from %s ended: %s", peer, exc or type(exc).__name__)
        finally:
            self._connections.discard(task)
            self._per_source[source] -= 1
            if not self._per_source[source]:
                del self._per_source[source]
            writer.close()

    def _log_refusal(self, source: str, why: str) -> None:
        """At most one line per interval, however many connections a flood opens."""
        self._refused += 1
        now = asyncio.get_running_loop().time()
        if now - self._refusal_logged_at >= _REFUSAL_LOG_INTERVAL_S:
            log.warning(
                "connection from %s refused: %s (%d refused since the last such line)",
                source,
                why,
                self._refused,
            )
            self._refusal_logged_at, self._refused = now, 0

    def _refusal(self, source: str) -> str:
        limits = self._limits
        if len(self._connections) >= limits.max_connections:
            return f"{limits.max_connections} connections are open (KUMA_DP_SERVER_MAX_CONNECTIONS)"
        if self._per_source[source] >= limits.max_connections_per_source:
            return (
                f"{limits.max_connections_per_source} connections from this address are open "
                "(KUMA_DP_SERVER_MAX_CONNECTIONS_PER_SOURCE)"
            )
        return ""

    async def _route(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object else None
        h2 = alpn == "h2"
        target = self._backends.grpc_socket if h2 else self._backends.http_socket
        try:
            # A client that connects and does not say what it wants is not kept.
            async with asyncio.timeout(self._limits.read_header_timeout):
                first = await (reader.readexactly(len(_H2_PREFACE)) if h2 else _read_head(reader))
        except TimeoutError:
            log.debug(
                "connection from %s closed: no request within the header timeout",
                writer.get_extra_info("peername"),
            )
            return
        local = str(target.parent / f"c{next(self._serial)}")
        try:
            up_reader, up_writer = await _connect_from(local, target)
        except OSError as exc:
            log.error("backend %s is not reachable: %s", target.name, exc)
            return
        task = asyncio.current_task()
        assert task is not None
        self._by_local_address[local] = task
        try:
            up_writer.write(first)
            await _splice(reader, writer, up_reader, up_writer, self._limits.idle_timeout)
        finally:
            self._by_local_address.pop(local, None)
            up_writer.close()


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """The bytes up to the end of the first HTTP/1.1 request head (whatever it holds)."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        # Longer than the reader's buffer limit: pass it on, the HTTP server refuses it (431/400).
        return await reader.read(_MAX_HEAD_BYTES)


async def _connect_from(local: str, target: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A Unix connection to `target` bound to the address `local` (its file removed at once: the
    name stays the socket's address, which the backend sees as the peer)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.bind(local)
        os.unlink(local)
        await asyncio.get_running_loop().sock_connect(sock, str(target))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_unix_connection(sock=sock)


class _Activity:
    """When a byte last moved either way on a spliced connection."""

    def __init__(self) -> None:
        self.last = asyncio.get_running_loop().time()

    def touch(self) -> None:
        self.last = asyncio.get_running_loop().time()


async def _splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
    idle_timeout: float,
) -> None:
    """Copy both ways until either side closes or nothing moves for `idle_timeout`; then close both."""
    activity = _Activity()
    tasks = [
        asyncio.create_task(_pump(a_reader, b_writer, activity)),
        asyncio.create_task(_pump(b_reader, a_writer, activity)),
        asyncio.create_task(_idle_watch(activity, idle_timeout)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _idle_watch(activity: _Activity, idle_timeout: float) -> None:
    loop = asyncio.get_running_loop()
    while (idle := loop.time() - activity.last) < idle_timeout:
        await asyncio.sleep(idle_timeout - idle)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, activity: _Activity) -> None:
    while data := await reader.read(_CHUNK):
        activity.touch()
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
