"""A real DP server (TLS, `/bootstrap`, `/certificate`, ADS) over a memory store with dpToken
authentication, for the identity tests: `running_dp_server()` and its `Cp` handle."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from control_plane.dp_server.authn import DpAuthenticator
from control_plane.dp_server.bootstrap_api import BootstrapSettings
from control_plane.dp_server.http_app import create_dp_http_app
from control_plane.dp_server.server import DpServer
from control_plane.dp_server.stream_reverify import StreamReverifier
from control_plane.dp_server.tls import resolve_tls_files
from control_plane.store.base import mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.xds.component import XdsComponent
from labkit.ports import free_port


@dataclass
class Cp:
    port: int
    ca: Path
    store: MemoryStore
    xds: XdsComponent

    def client(self) -> httpx.AsyncClient:
        verify = ssl.create_default_context(cafile=str(self.ca))
        return httpx.AsyncClient(base_url=f"https://localhost:{self.port}", verify=verify)


@contextlib.asynccontextmanager
async def running_dp_server(work: Path, reverify_interval_s: float | None = None) -> AsyncIterator[Cp]:
    """`reverify_interval_s`: check open ADS streams' tokens again this often (None: never)."""
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    work.mkdir(exist_ok=True)
    tls = resolve_tls_files(work, None, None)
    authn = DpAuthenticator(store, "dpToken")
    watch = StreamReverifier(store, authn, reverify_interval_s).watch if reverify_interval_s else None
    xds = XdsComponent(
        store, deregistration_delay_s=0.1, authenticate=authn.authenticate_stream, watch_stream=watch
    )
    port = free_port()
    app = create_dp_http_app(store, BootstrapSettings(dp_server_port=port), authn)
    server = DpServer(tls, port, app, xds.register, host="127.0.0.1")
    tasks = [asyncio.create_task(server.run()), asyncio.create_task(xds.run())]
    await asyncio.wait_for(server.started.wait(), 10)
    try:
        yield Cp(port, tls.cert_file, store, xds)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
