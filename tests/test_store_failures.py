"""The SQLite store when things go wrong underneath it: a full disk, a row damaged by hand.

A full disk is a real one (a 1 MiB tmpfs, root only, as CI runs); the damaged rows are written with
sqlite3 straight into the file, as an operator's mistake or a bad restore would leave them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.store.base import StoreError, dataplane_key, mesh_key
from control_plane.store.sqlite import SqliteStore
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.names import ENDPOINT_TYPE
from control_plane.xds.reconciler import Reconciler
from labkit.waiting import eventually


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted at the end."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("needs root to mount a tmpfs (CI=true: not skipping)")
        pytest.skip("needs root to mount a tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_says_so_and_the_store_keeps_working(tiny_disk: Path) -> None:
    store = SqliteStore(tiny_disk / "kuma.db")
    try:
        with pytest.raises(StoreError) as info:  # bigger than the disk: SQLite rolls back itself
            store.upsert(mesh_key("big"), {"filler": "x" * 3_000_000})
        assert "database or disk is full" in str(info.value)
        assert "no transaction is active" not in str(info.value)
        store.upsert(mesh_key("small"), {})  # the failed write left nothing half done
        assert [m.key.name for m in store.list("Mesh")[0]] == ["small"]
    finally:
        store.close()


def _damage(path: Path, name: str, spec: bytes) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE resources SET spec = CAST(? AS TEXT) WHERE name = ?", (spec, name))


def test_damaged_rows_are_skipped_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "kuma.db"
    store = SqliteStore(path)
    for name in ("a", "b", "c", "d"):
        store.upsert(mesh_key(name), {"name": name})
    _damage(path, "b", b'{"name": "b", ')  # cut short
    _damage(path, "c", b'{"name": "\xff"}')  # not UTF-8: sqlite3 itself would fail the whole fetch
    with caplog.at_level(logging.ERROR, logger="control_plane.store.sqlite"):
        for _ in range(3):
            items, total = store.list("Mesh")
            assert [m.key.name for m in items] == ["a", "d"] and total == 2
        assert store.get(mesh_key("b")) is None
        assert store.get(mesh_key("a")).spec == {"name": "a"}
    skipped = [r.getMessage() for r in caplog.records if "skipping the unreadable row" in r.getMessage()]
    assert len(skipped) == 2 and "Mesh//b" in skipped[0] and "Mesh//c" in skipped[1]
    store.upsert(mesh_key("b"), {"name": "b"})  # writing the resource again repairs it
    assert [m.key.name for m in store.list("Mesh")[0]] == ["a", "b", "d"]
    store.close()


def _dataplane(name: str, address: str, service: str) -> dict[str, object]:
    inbound = [{"port": 8080, "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}]
    outbound = [{"port": 9000, "tags": {"kuma.io/service": "backend"}}]
    return {"networking": {"address": address, "inbound": inbound, "outbound": outbound}}


async def test_a_damaged_dataplane_row_does_not_stop_the_meshs_xds(tmp_path: Path) -> None:
    path = tmp_path / "kuma.db"
    store = SqliteStore(path)
    store.upsert(mesh_key("default"), {})
    store.upsert(dataplane_key("web"), _dataplane("web", "10.0.0.1", "web"))
    store.upsert(dataplane_key("broken"), _dataplane("broken", "10.0.0.2", "backend"))
    _damage(path, "broken", b"{")
    cache = SnapshotCache()
    reconciler = Reconciler(store, cache, debounce_s=0.01)
    task = asyncio.create_task(reconciler.run())
    try:
        reconciler.track("default.web", {})
        await eventually(lambda: cache.get("default.web") is not None)
        # A new endpoint of `backend` still reaches web: the mesh keeps being rebuilt.
        store.upsert(dataplane_key("backend-1"), _dataplane("backend-1", "10.0.0.3", "backend"))
        await eventually(lambda: b"10.0.0.3" in _endpoints(cache, "default.web"))
        assert b"10.0.0.2" not in _endpoints(cache, "default.web")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()


def _endpoints(cache: SnapshotCache, node: str) -> bytes:
    entries = cache.get(node).get(ENDPOINT_TYPE).entries
    return b"".join(bytes(entry.packed.value) for entry in entries.values())
