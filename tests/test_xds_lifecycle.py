"""The universal lifecycle across a control-plane restart: a Dataplane its proxy registered is
removed when that proxy does not come back, and kept when it does. Dataplanes applied by hand are
never touched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_plane.store.base import ResourceKey, ResourceStore, StoreError, dataplane_key, mesh_key
from control_plane.store.sqlite import SqliteStore
from control_plane.xds.client import AdsClient
from control_plane.xds.component import XdsComponent
from control_plane.xds.names import LISTENER_TYPE
from labkit.waiting import eventually
from tests.support.xds_control_plane import WEB, node


@contextlib.asynccontextmanager
async def xds(store: ResourceStore, grace_s: float) -> AsyncIterator[int]:
    component = XdsComponent(store, deregistration_delay_s=0.2, startup_grace_s=grace_s)
    server = grpc.aio.server()
    component.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    runner = asyncio.create_task(component.run())
    try:
        yield port
    finally:
        runner.cancel()  # like a crash of the control plane: no deregistration runs
        await asyncio.gather(runner, return_exceptions=True)
        await server.stop(grace=0)


async def connect(port: int, opened: list[AdsClient | grpc.aio.Channel]) -> None:
    """A proxy's ADS stream carrying web-1's Dataplane; returns once it got its listeners."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    client = AdsClient(channel, node("default.web-1", WEB))
    opened += [client, channel]
    client.send(LISTENER_TYPE)
    await client.recv(5)


async def test_registered_dataplane_removed_after_restart_unless_its_proxy_returns(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kuma.db")
    store.upsert(mesh_key("default"), {})
    store.upsert(dataplane_key("applied-1"), {"networking": {"address": "10.0.0.9", "inbound": [
        {"port": 80, "tags": {"kuma.io/service": "applied"}}]}})  # fmt: skip
    opened: list[AdsClient | grpc.aio.Channel] = []
    try:
        async with xds(store, grace_s=0.5) as port:
            await connect(port, opened)
            await eventually(lambda: store.get(dataplane_key("web-1")) is not None)
        # Restarted, and the proxy reconnects within the grace: its Dataplane stays.
        async with xds(store, grace_s=0.5) as port:
            await connect(port, opened)
            await asyncio.sleep(1.0)
            assert store.get(dataplane_key("web-1")) is not None
        # Restarted again, and the proxy never comes back: removed after the grace.
        async with xds(store, grace_s=0.5):
            await asyncio.sleep(0.2)
            assert store.get(dataplane_key("web-1")) is not None
            await eventually(lambda: store.get(dataplane_key("web-1")) is None, timeout=5)
            assert store.get(dataplane_key("applied-1")) is not None  # applied by hand: kept
    finally:
        for item in opened:  # clients before their channels
            await item.close()
        store.close()


class RefusesOneDelete(SqliteStore):
    """The store refusing the first delete, as a full disk or a locked database would."""

    refused = 0

    def delete(self, key: ResourceKey, *args: Any, **kwargs: Any) -> bool:
        if not self.refused:
            self.refused += 1
            raise StoreError(f"the SQLite store {self.path}: deleting failed: database is locked")
        return super().delete(key, *args, **kwargs)


async def test_a_failed_deregistration_is_logged_and_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RefusesOneDelete(tmp_path / "kuma.db")
    store.upsert(mesh_key("default"), {})
    opened: list[AdsClient | grpc.aio.Channel] = []
    try:
        async with xds(store, grace_s=0.5) as port:
            await connect(port, opened)
            await eventually(lambda: store.get(dataplane_key("web-1")) is not None)
            for item in opened:  # the proxy goes away: deregistered 0.2 s later, first try refused
                await item.close()
            opened.clear()
            await eventually(lambda: store.refused == 1, timeout=5)
            await eventually(lambda: store.get(dataplane_key("web-1")) is None, timeout=10)
        warnings = [r.getMessage() for r in caplog.records if "could not deregister" in r.getMessage()]
        assert len(warnings) == 1 and "database is locked" in warnings[0]
        assert "never retrieved" not in caplog.text
    finally:
        for item in opened:
            await item.close()
        store.close()
