"""Store semantics shared by MemoryStore, SqliteStore and PostgresStore, plus what only SQLite has
to keep (PostgreSQL's own: tests/test_store_postgres.py)."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.config import load_config
from control_plane.store.base import (
    ChangeEvent,
    ConflictError,
    MissingError,
    ResourceKey,
    ResourceStore,
    StoreError,
    Write,
    dataplane_key,
    mesh_key,
)
from control_plane.store.defaults import ensure_default_mesh
from control_plane.store.factory import open_store
from control_plane.store.memory import MemoryStore
from control_plane.store.postgres import PostgresStore
from control_plane.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore
from tests.support.postgres import PostgresServer, free_port, migrated_database

SPEC = {"networking": {"address": "10.0.0.1", "inbound": [{"port": 1, "tags": {"kuma.io/service": "a"}}]}}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResourceStore]:
    backend: ResourceStore
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "sqlite":
        backend = SqliteStore(tmp_path / "kuma.db")
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        backend = PostgresStore(server.config(migrated_database(server)))
    yield backend
    backend.close()


def test_create_get_update_keeps_creation_time(store: ResourceStore) -> None:
    key = dataplane_key("dp-1")
    created, was_created = store.upsert(key, SPEC)
    assert was_created and created.version == 1
    assert store.get(key) == created
    spec2 = {"networking": {**SPEC["networking"], "address": "10.0.0.2"}}
    updated, was_created = store.upsert(key, spec2)
    assert not was_created
    assert updated.version == 2
    assert updated.creation_time == created.creation_time
    assert updated.modification_time >= created.modification_time
    assert store.get(key).spec == spec2  # type: ignore[union-attr]
    doc = updated.document()
    assert (doc["type"], doc["mesh"], doc["name"]) == ("Dataplane", "default", "dp-1")
    assert doc["networking"]["address"] == "10.0.0.2"


def test_get_absent_is_none_and_delete_absent_is_false(store: ResourceStore) -> None:
    assert store.get(mesh_key("nope")) is None
    assert store.delete(mesh_key("nope")) is False


def test_list_orders_by_mesh_then_name_with_offset_limit_total(store: ResourceStore) -> None:
    for mesh, name in [("b", "x"), ("a", "z"), ("a", "y"), ("b", "a"), ("c", "m")]:
        store.upsert(dataplane_key(name, mesh), SPEC)
    store.upsert(mesh_key("a"), {})
    items, total = store.list("Dataplane")
    assert total == 5
    assert [(r.key.mesh, r.key.name) for r in items] == [
        ("a", "y"),
        ("a", "z"),
        ("b", "a"),
        ("b", "x"),
        ("c", "m"),
    ]
    page, total = store.list("Dataplane", offset=1, limit=2)
    assert total == 5
    assert [r.key.name for r in page] == ["z", "a"]
    in_b, total_b = store.list("Dataplane", mesh="b")
    assert total_b == 2 and [r.key.name for r in in_b] == ["a", "x"]
    past_end, total = store.list("Dataplane", offset=10, limit=5)
    assert past_end == [] and total == 5
    meshes, _ = store.list("Mesh")
    assert [r.key.name for r in meshes] == ["a"]


def test_expected_version_conflicts(store: ResourceStore) -> None:
    key = mesh_key("m")
    store.upsert(key, {}, expected_version=0)
    with pytest.raises(ConflictError):
        store.upsert(key, {}, expected_version=0)
    store.upsert(key, {}, expected_version=1)
    with pytest.raises(ConflictError):
        store.delete(key, expected_version=1)
    assert store.get(key).version == 2  # type: ignore[union-attr]
    assert store.delete(key, expected_version=2)


def test_cascade_delete_of_a_mesh_only_touches_that_mesh(store: ResourceStore) -> None:
    store.upsert(mesh_key("a"), {})
    store.upsert(mesh_key("b"), {})
    store.upsert(dataplane_key("1", "a"), SPEC)
    store.upsert(dataplane_key("2", "a"), SPEC)
    store.upsert(dataplane_key("3", "b"), SPEC)
    events: list[ChangeEvent] = []
    store.subscribe(events.append)
    assert store.delete(mesh_key("a"), cascade_mesh=True)
    assert [r.key.name for r in store.list("Dataplane")[0]] == ["3"]
    assert store.get(mesh_key("a")) is None and store.get(mesh_key("b")) is not None
    assert {e.key for e in events} == {mesh_key("a"), dataplane_key("1", "a"), dataplane_key("2", "a")}
    assert {e.op for e in events} == {"delete"}


def test_without_cascade_a_mesh_delete_leaves_its_contents(store: ResourceStore) -> None:
    store.upsert(mesh_key("a"), {})
    store.upsert(dataplane_key("1", "a"), SPEC)
    assert store.delete(mesh_key("a"))
    assert store.get(dataplane_key("1", "a")) is not None


def test_a_write_requiring_a_missing_resource_writes_nothing(store: ResourceStore) -> None:
    with pytest.raises(MissingError) as caught:
        store.upsert_all(
            [
                Write(mesh_key("x"), {}),
                Write(dataplane_key("1", "nope"), SPEC, requires=mesh_key("nope")),
            ]
        )
    assert caught.value.key == mesh_key("nope")
    assert store.get(mesh_key("x")) is None  # the whole batch is refused
    # A requirement written earlier in the same batch counts.
    store.upsert_all([Write(mesh_key("m"), {}), Write(dataplane_key("1", "m"), SPEC, requires=mesh_key("m"))])
    assert store.get(dataplane_key("1", "m")) is not None


def test_owned_resources_go_with_their_owner_transitively(store: ResourceStore) -> None:
    store.upsert(mesh_key("default"), {})
    owner = dataplane_key("dp-1")
    child = ResourceKey("DataplaneRegistration", "default", "dp-1")
    grandchild = ResourceKey("Note", "default", "n")
    store.upsert_all([Write(owner, SPEC), Write(child, {}, owner=owner), Write(grandchild, {}, owner=child)])
    assert store.get(child).owner == owner  # type: ignore[union-attr]
    assert store.get(owner).owner is None  # type: ignore[union-attr]
    with pytest.raises(MissingError):
        store.upsert_all([Write(ResourceKey("Note", "default", "orphan"), {}, owner=dataplane_key("nope"))])
    store.upsert(dataplane_key("dp-2"), SPEC)
    assert store.delete(owner)
    assert store.get(child) is None and store.get(grandchild) is None
    assert store.get(dataplane_key("dp-2")) is not None


def test_listeners_see_committed_writes(store: ResourceStore) -> None:
    seen: list[tuple[ChangeEvent, bool]] = []

    def listener(event: ChangeEvent) -> None:
        # Called after commit: the change is already visible to readers.
        seen.append((event, store.get(event.key) is not None))

    unsubscribe = store.subscribe(listener)
    key = mesh_key("m")
    store.upsert(key, {})
    store.delete(key)
    unsubscribe()
    store.upsert(key, {})
    assert seen == [(ChangeEvent("upsert", key), True), (ChangeEvent("delete", key), False)]


def test_concurrent_upserts_from_50_threads(store: ResourceStore) -> None:
    barrier = threading.Barrier(50)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            store.upsert(dataplane_key(f"dp-{i:02d}"), SPEC)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    items, total = store.list("Dataplane")
    assert total == 50
    assert [r.key.name for r in items] == [f"dp-{i:02d}" for i in range(50)]


def test_ensure_default_mesh_is_idempotent(store: ResourceStore) -> None:
    assert ensure_default_mesh(store) is True
    first = store.get(mesh_key("default"))
    assert first is not None and first.document() == {
        "type": "Mesh",
        "name": "default",
        "creationTime": first.creation_time,
        "modificationTime": first.modification_time,
    }
    assert ensure_default_mesh(store) is False
    assert store.get(mesh_key("default")) == first


# --- SQLite only --------------------------------------------------------------------------------


def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "kuma.db"
    first = SqliteStore(path)
    stored, _ = first.upsert(dataplane_key("dp-1"), SPEC)
    first.upsert(mesh_key("default"), {"mtls": {"enabledBackend": "ca-1"}})
    first.close()
    again = SqliteStore(path)
    try:
        assert again.get(dataplane_key("dp-1")) == stored
        assert again.get(mesh_key("default")).spec == {"mtls": {"enabledBackend": "ca-1"}}  # type: ignore[union-attr]
        updated, created = again.upsert(dataplane_key("dp-1"), SPEC)
        assert not created and updated.version == 2
    finally:
        again.close()


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "kuma.db"
        backend = SqliteStore(path)
        backend.upsert(mesh_key("m"), {})
    finally:
        os.umask(old_umask)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for sidecar in (tmp_path / "kuma.db-wal", tmp_path / "kuma.db-shm"):
            if sidecar.exists():
                assert stat.S_IMODE(sidecar.stat().st_mode) & 0o077 == 0, sidecar
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        backend.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "kuma.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 999")
    conn.close()
    with pytest.raises(StoreError, match="schema version 999"):
        SqliteStore(path)


def test_sqlite_migrates_a_store_of_the_first_schema_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "kuma.db"
    with sqlite3.connect(path) as conn:  # what the first release wrote
        conn.executescript(MIGRATIONS[0])
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute(
            "INSERT INTO resources VALUES ('Mesh', '', 'default', '{}', 3, '2026-01-01T00:00:00.000Z', "
            "'2026-01-02T00:00:00.000Z')"
        )
    conn.close()
    store = SqliteStore(path)
    try:
        mesh = store.get(mesh_key("default"))
        assert mesh is not None and mesh.version == 3 and mesh.owner is None
        store.upsert_all(
            [
                Write(dataplane_key("dp"), SPEC),
                Write(ResourceKey("X", "default", "x"), {}, owner=dataplane_key("dp")),
            ]
        )
        assert store.delete(dataplane_key("dp")) and store.get(ResourceKey("X", "default", "x")) is None
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "kuma.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=str(path)):
        SqliteStore(path)


def test_open_store_creates_private_work_dir(tmp_path: Path) -> None:
    work_dir = tmp_path / "work" / "kuma"
    config = load_config(None, env={"KUMA_GENERAL_WORK_DIR": str(work_dir)})
    backend = open_store(config)
    try:
        assert isinstance(backend, SqliteStore)
        assert stat.S_IMODE(work_dir.stat().st_mode) == 0o700
        assert (work_dir / "kuma.db").exists()
    finally:
        backend.close()


def test_open_store_memory_and_postgres(tmp_path: Path) -> None:
    assert isinstance(open_store(load_config(None, env={"KUMA_STORE_TYPE": "memory"})), MemoryStore)
    env = {"KUMA_STORE_TYPE": "postgres", "KUMA_STORE_POSTGRES_PORT": str(free_port())}  # nobody listens
    with pytest.raises(StoreError, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:\d+/kuma \(.*refused"):
        open_store(load_config(None, env=env), wait=False)


def test_keys_are_exact(store: ResourceStore) -> None:
    store.upsert(ResourceKey("Dataplane", "a", "x"), SPEC)
    assert store.get(ResourceKey("Dataplane", "b", "x")) is None
    assert store.get(ResourceKey("Mesh", "", "x")) is None


def test_a_guarded_delete_goes_ahead_only_while_the_guard_is_unchanged(store: ResourceStore) -> None:
    store.upsert(mesh_key("default"), {})
    store.upsert(dataplane_key("dp"), SPEC)
    record, _ = store.upsert(ResourceKey("DataplaneRegistration", "default", "dp"), {"connected": False})
    store.upsert(record.key, {"connected": True})  # the proxy came back meanwhile
    with pytest.raises(ConflictError):
        store.delete(dataplane_key("dp"), guards=[(record.key, record.version)])
    assert store.get(dataplane_key("dp")) is not None
    # Absent must stay absent (version 0).
    with pytest.raises(ConflictError):
        store.delete(dataplane_key("dp"), guards=[(record.key, 0)])
    assert store.delete(
        dataplane_key("dp"), guards=[(record.key, 2), (ResourceKey("X", "default", "none"), 0)]
    )
    assert store.get(dataplane_key("dp")) is None
