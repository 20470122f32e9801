"""One TLS port for the bootstrap API and ADS, as Kuma serves them on 5678.

The front terminates TLS and routes each connection by the ALPN protocol the client negotiated:
`h2` (Envoy's gRPC ADS client) goes to the gRPC server, anything else (the agent's HTTP/1.1
bootstrap and identity calls) to the HTTP app. Both backends listen on Unix sockets in a private
directory, so nothing but the front is reachable from the network.
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
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kuma-cp.dp-server")

_CHUNK = 64 * 1024
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
    def __init__(self, backends: Backends, ssl_context: ssl.SSLContext) -> None:
        self._backends = backends
        self._ssl = ssl_context
        self._connections: set[asyncio.Task[None]] = set()
        # Each backend connection comes from its own Unix address, so a backend can name the
        # client connection it wants closed (close_peer): gRPC reports it as the call's peer.
        self._by_local_address: dict[str, asyncio.Task[None]] = {}
        self._serial = itertools.count(1)

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
        server = await asyncio.start_server(
            self._accept, host, port, ssl=self._ssl, ssl_handshake_timeout=10, reuse_address=True
        )
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
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._route(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.debug("connection from %s ended: %s", writer.get_extra_info("peername"), exc)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _route(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object else None
        target = self._backends.grpc_socket if alpn == "h2" else self._backends.http_socket
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
            await _splice(reader, writer, up_reader, up_writer)
        finally:
            self._by_local_address.pop(local, None)
            up_writer.close()


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


async def _splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side closes; then close both."""
    tasks = [
        asyncio.create_task(_pump(a_reader, b_writer)),
        asyncio.create_task(_pump(b_reader, a_writer)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
