"""Slow and many clients of the DP server's TLS front (issue 15, "Slow clients"): header, body and
idle timeouts, total and per-source connection limits; idle connections do not stop a bootstrap."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from control_plane.config import DpServerLimits
from control_plane.dp_server.bootstrap_api import BootstrapSettings, create_bootstrap_app
from control_plane.dp_server.http_app import limited
from control_plane.dp_server.server import DpServer
from control_plane.dp_server.tls import resolve_tls_files
from control_plane.store.base import mesh_key
from control_plane.store.memory import MemoryStore
from labkit.ports import free_port
from labkit.waiting import eventually
from tests.test_dp_server import _request

pytestmark = pytest.mark.timeout(60)

# Short timeouts so the test is fast; production defaults are 5s, 10s and 2m (docs/security.md).
FAST = DpServerLimits(read_header_timeout=1.0, read_timeout=1.0, idle_timeout=3.0)


@dataclass
class Front:
    port: int
    ca: Path

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.context(), server_hostname="localhost"
        )

    async def bootstrap(self, tmp_path: Path) -> httpx.Response:
        async with httpx.AsyncClient(verify=self.context(), timeout=10) as client:
            body = _request(self.ca.read_text(), tmp_path)
            return await client.post(f"https://localhost:{self.port}/bootstrap", json=body)


@asynccontextmanager
async def front(tmp_path: Path, limits: DpServerLimits) -> AsyncIterator[Front]:
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    tls = resolve_tls_files(tmp_path, None, None)
    port = free_port()
    app = limited(
        create_bootstrap_app(store, BootstrapSettings(dp_server_port=port)), 1 << 20, limits.read_timeout
    )
    server = DpServer(tls, port, app, lambda grpc_server: None, host="127.0.0.1", limits=limits)
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(server.started.wait(), 10)
    try:
        yield Front(port, tls.cert_file)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Reads whatever is left until the server closes the connection."""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await reader.read()
    return True


async def _wait_closed(reader: asyncio.StreamReader, within: float) -> None:
    assert await asyncio.wait_for(_closed_by_server(reader), within)


async def test_idle_connections_do_not_stop_a_bootstrap_and_are_closed(tmp_path: Path) -> None:
    async with front(tmp_path, FAST) as dp:
        idle = [await dp.connect() for _ in range(200)]
        half_reader, half_writer = await dp.connect()
        half_writer.write(b"POST /bootstrap HTTP/1.1\r\nHost: localhost\r\n")  # half a head
        resp = await dp.bootstrap(tmp_path)
        assert resp.status_code == 200, resp.text
        # Neither the idle ones nor the half head are kept past the header timeout (1 s here).
        await _wait_closed(half_reader, 10)
        await asyncio.gather(*(_wait_closed(reader, 10) for reader, _ in idle))
        for _, writer in [*idle, (half_reader, half_writer)]:
            writer.close()


async def test_a_body_that_trickles_gets_408(tmp_path: Path) -> None:
    async with front(tmp_path, FAST) as dp:
        reader, writer = await dp.connect()
        writer.write(b"POST /bootstrap HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
        answer = await asyncio.wait_for(reader.read(4096), 10)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"did not arrive within 1s" in answer
        writer.close()


async def test_a_connection_where_nothing_moves_is_closed(tmp_path: Path) -> None:
    async with front(tmp_path, FAST) as dp:
        reader, writer = await dp.connect()
        writer.write(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 ")
        writer.write(b"GET /nothing HTTP/1.1\r\n")  # a second request's head, never finished
        await _wait_closed(reader, 15)
        writer.close()


@pytest.mark.parametrize(
    "limits",
    [
        DpServerLimits(read_header_timeout=2.0, max_connections_per_source=5),
        DpServerLimits(read_header_timeout=2.0, max_connections=5),
    ],
    ids=["per-source", "total"],
)
async def test_connections_over_the_limit_are_refused_until_some_close(
    tmp_path: Path, limits: DpServerLimits
) -> None:
    async with front(tmp_path, limits) as dp:
        held = [await dp.connect() for _ in range(5)]
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            reader, writer = await dp.connect()  # TCP connects; the handshake is refused
            await reader.readexactly(1)
        # The held ones time out (no request); then a bootstrap gets through.
        await asyncio.gather(*(_wait_closed(reader, 10) for reader, _ in held))

        async def bootstrap_ok() -> bool:
            return (await dp.bootstrap(tmp_path)).status_code == 200

        await eventually(bootstrap_ok, 10, what="a bootstrap once the idle connections are gone")
        for _, writer in held:
            writer.close()
