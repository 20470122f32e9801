"""The DNS records as the agent reads them, from a REAL Envoy configured by our control plane: the
Unix socket in the work dir (0600), `GET /dns` with an etag, `304` for an unchanged etag, a new
service's name within 2 s of its first Dataplane, and a mesh with more records than Envoy's default
4 KiB direct-response limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from control_plane.config import load_config
from control_plane.dns.allocator import VipAllocator
from control_plane.store.base import Write, dataplane_key
from kuma_common.dp_contract import DNS_RECORDS_PATH, DNS_RECORDS_SOCKET
from labkit.ports import free_port
from labkit.waiting import eventually
from tests.support.xds_control_plane import control_plane, dataplane_doc, running_envoy, store_dataplane

pytestmark = pytest.mark.timeout(90)

DNS = load_config(None, env={}).dns_server  # VIPs recomputed at most every 500 ms (Kuma's default)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A work dir whose socket path fits a Unix socket (pytest's tmp_path can be long)."""
    path = Path(tempfile.mkdtemp(prefix="kdns-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def transparent(name: str, service: str, port: int) -> dict:
    doc = dataplane_doc(name, [{"port": port, "tags": {"kuma.io/service": service}}])
    doc["networking"]["transparentProxying"] = {
        "redirectPortInbound": free_port(),
        "redirectPortOutbound": free_port(),
    }
    return doc


@contextlib.asynccontextmanager
async def allocator(store: object) -> AsyncIterator[None]:
    task = asyncio.create_task(VipAllocator(store, DNS).run())  # type: ignore[arg-type]
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def fetch(socket: Path, etag: str | None = None) -> httpx.Response:
    headers = {"if-none-match": etag} if etag else {}
    transport = httpx.AsyncHTTPTransport(uds=str(socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://envoy", timeout=2) as client:
        return await client.get(DNS_RECORDS_PATH, headers=headers)


def names(response: httpx.Response) -> dict[str, str]:
    doc = response.json()
    assert doc["domain"] == "mesh"
    return {r["name"]: r["ips"][0] for r in doc["records"]}


async def test_envoy_serves_the_mesh_records_to_its_agent(envoy_binary: Path, short_dir: Path) -> None:
    async with control_plane(dns=DNS) as cp, allocator(cp.store):
        store_dataplane(
            cp.store, dataplane_doc("backend-1", [{"port": 18080, "tags": {"kuma.io/service": "backend"}}])
        )
        web = transparent("web-1", "web", 18081)
        socket = short_dir / "web-1" / DNS_RECORDS_SOCKET
        async with running_envoy(envoy_binary, short_dir / "web-1", cp.port, web):

            async def records() -> httpx.Response | None:
                if not socket.exists():
                    return None
                response = await fetch(socket)
                return response if response.status_code == 200 and "web.mesh" in response.text else None

            first = await eventually(records, timeout=10)
            assert names(first) == {"backend.mesh": "240.0.0.1", "web.mesh": "240.0.0.2"}
            assert first.headers["content-type"] == "application/json"
            assert stat.S_IMODE(socket.stat().st_mode) == 0o600
            etag = first.headers["etag"]
            unchanged = await fetch(socket, etag)
            assert (unchanged.status_code, unchanged.content, unchanged.headers["etag"]) == (304, b"", etag)
            assert (await fetch(socket, '"stale"')).status_code == 200

            # A new service is resolvable within 2 s of its first Dataplane.
            started = time.monotonic()
            store_dataplane(
                cp.store, dataplane_doc("db-1", [{"port": 18082, "tags": {"kuma.io/service": "db_x"}}])
            )

            async def with_db() -> httpx.Response | None:
                response = await fetch(socket, etag)
                return response if response.status_code == 200 and "db_x.mesh" in response.text else None

            changed = await eventually(with_db, timeout=2)
            took = time.monotonic() - started
            assert names(changed)["db_x.mesh"] == names(changed)["db.x.mesh"] == "240.0.0.3"
            assert changed.headers["etag"] != etag
            print(f"new service resolvable after {took:.2f} s")

            # More records than Envoy's default 4 KiB direct-response body.
            writes = [
                Write(dataplane_key(f"svc-{i}-1"), {"networking": {"address": "127.0.0.1", "inbound": [
                    {"port": 20000 + i, "tags": {"kuma.io/service": f"service-number-{i:03d}"}}
                ]}})
                for i in range(200)
            ]  # fmt: skip
            cp.store.upsert_all(writes)

            async def all_of_them() -> dict[str, str] | None:
                response = await fetch(socket)
                found = names(response) if response.status_code == 200 else {}
                return found if len(found) == 204 else None

            found = await eventually(all_of_them, timeout=10)
            assert len(json.dumps(found)) > 4096
            assert len(set(found.values())) == 203  # db_x's two names share one address
