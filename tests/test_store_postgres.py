"""What only the PostgreSQL store has: several instances on one database (two PostgresStore objects
stand for two control planes), LISTEN/NOTIFY and resync, outages, migrations, the leader lock.

A private server (tests/support/postgres.py, the session's `postgres` fixture) with a fresh
database per test. The contract shared with memory and SQLite is in tests/test_store_sqlite.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from psycopg.conninfo import conninfo_to_dict

from control_plane.config import ConfigError, PostgresConfig, load_config
from control_plane.store.base import (
    ChangeEvent,
    ConflictError,
    MissingError,
    ResourceKey,
    StoreError,
    Write,
    dataplane_key,
    mesh_key,
)
from control_plane.store.postgres import PostgresStore, connect, conninfo
from control_plane.store.postgres_schema import SCHEMA_VERSION, migrate_up
from labkit.lab import Lab
from labkit.waiting import wait_until
from tests.support.postgres import PostgresServer, migrated_database

SPEC = {"networking": {"address": "10.0.0.1", "inbound": [{"port": 1, "tags": {"kuma.io/service": "a"}}]}}
KUMA_CP = Path(sys.executable).parent / "kuma-cp"


@pytest.fixture
def open_store(postgres: PostgresServer) -> Iterator[Callable[..., PostgresStore]]:
    """Opens PostgresStores on one fresh database (instances of one cluster); all closed at the end."""
    db = migrated_database(postgres)
    opened: list[PostgresStore] = []

    def open_one(**overrides: object) -> PostgresStore:
        store = PostgresStore(postgres.config(db, **overrides))
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def _events(store: PostgresStore) -> list[ChangeEvent]:
    seen: list[ChangeEvent] = []
    store.subscribe(seen.append)
    return seen


def _terminate(postgres: PostgresServer, application_name: str) -> None:
    rows = postgres.admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE application_name = '{application_name}'"
    )
    assert rows == [(True,)], f"one backend named {application_name}: {rows}"


def test_a_write_of_one_instance_reaches_the_others_listener(
    open_store: Callable[..., PostgresStore],
) -> None:
    a, b = open_store(resync_interval=600.0), open_store(resync_interval=600.0)  # LISTEN/NOTIFY only
    seen_by_b, seen_by_a = _events(b), _events(a)
    a.upsert(mesh_key("m"), {})
    wait_until(
        lambda: ChangeEvent("upsert", mesh_key("m")) in seen_by_b, timeout=1.0, what="B hears A's upsert"
    )
    assert b.get(mesh_key("m")) is not None
    a.delete(mesh_key("m"))
    wait_until(
        lambda: ChangeEvent("delete", mesh_key("m")) in seen_by_b, timeout=1.0, what="B hears A's delete"
    )
    # A heard its own writes once each, after commit, not again through the database.
    assert seen_by_a == [ChangeEvent("upsert", mesh_key("m")), ChangeEvent("delete", mesh_key("m"))]


def test_50_concurrent_upserts_over_two_instances_lose_none(open_store: Callable[..., PostgresStore]) -> None:
    stores = (open_store(), open_store())
    barrier = threading.Barrier(50)
    versions: list[int] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            store = stores[i % 2]
            store.upsert(dataplane_key(f"dp-{i:02d}"), SPEC)
            versions.append(store.upsert(dataplane_key("hot"), {"writer": i})[0].version)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    items, total = stores[1].list("Dataplane")
    assert total == 51 and len(items) == 51
    # Each write of the shared key got its own version: none overwrote another unseen.
    assert sorted(versions) == list(range(1, 51))
    assert stores[0].get(dataplane_key("hot")).version == 50  # type: ignore[union-attr]


def test_a_stale_expected_version_is_a_conflict_across_instances(
    open_store: Callable[..., PostgresStore],
) -> None:
    a, b = open_store(), open_store()
    stored, _ = a.upsert(mesh_key("m"), {})
    b.upsert(mesh_key("m"), {"mtls": {}}, expected_version=stored.version)
    with pytest.raises(ConflictError):
        a.upsert(mesh_key("m"), {}, expected_version=stored.version)
    with pytest.raises(ConflictError):
        a.upsert(mesh_key("m"), {}, expected_version=0)
    with pytest.raises(ConflictError):
        a.upsert(mesh_key("new"), {}, expected_version=3)  # not there: it cannot be at version 3
    with pytest.raises(ConflictError):
        a.delete(mesh_key("m"), expected_version=stored.version)
    assert a.get(mesh_key("m")).spec == {"mtls": {}}  # type: ignore[union-attr]
    assert a.get(mesh_key("new")) is None


def test_writes_racing_a_cascade_mesh_delete_never_leave_an_orphan(
    open_store: Callable[..., PostgresStore],
) -> None:
    a, b = open_store(), open_store()
    for round_ in range(5):
        mesh = mesh_key(f"m{round_}")
        a.upsert(mesh, {})
        start = threading.Barrier(5)
        written: list[ResourceKey] = []

        def writer(
            n: int,
            mesh: ResourceKey = mesh,
            start: threading.Barrier = start,
            written: list[ResourceKey] = written,
        ) -> None:
            start.wait()
            for i in range(1000):
                key = ResourceKey("Dataplane", mesh.name, f"dp-{n}-{i}")
                owned = ResourceKey("DataplaneInsight", mesh.name, f"dp-{n}-{i}")
                try:
                    b.upsert_all(
                        [Write(key, SPEC, requires=mesh), Write(owned, {}, requires=mesh, owner=key)]
                    )
                except MissingError:
                    return
                written.append(key)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        start.wait()
        wait_until(
            lambda written=written: len(written) >= 8, timeout=10, what="some writes before the delete"
        )
        assert a.delete(mesh, cascade_mesh=True)
        for t in threads:
            t.join(timeout=30)
        assert written, "no write got in before the delete: the race was not run"
        for kind in ("Dataplane", "DataplaneInsight"):
            assert a.list(kind, mesh=mesh.name) == ([], 0), f"round {round_}: {kind} orphans"


def test_a_notification_missed_while_listening_was_cut_arrives_by_resync(
    open_store: Callable[..., PostgresStore], postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    a = open_store(resync_interval=600.0)
    b = open_store(resync_interval=600.0)  # only the resync after reconnecting can deliver it
    seen_by_b = _events(b)
    caplog.set_level(logging.WARNING, logger="control_plane.store.postgres")
    _terminate(postgres, b.listen_name)
    a.upsert(mesh_key("during-cut"), {})
    wait_until(
        lambda: ChangeEvent("upsert", mesh_key("during-cut")) in seen_by_b,
        timeout=10,
        what="B gets the event",
    )
    lost = [r for r in caplog.records if "lost the change notification connection" in r.getMessage()]
    assert len(lost) == 1, "one line per outage"


def test_the_store_works_again_after_postgres_restarts(
    open_store: Callable[..., PostgresStore], postgres: PostgresServer
) -> None:
    store = open_store(connection_timeout=2)
    store.upsert(mesh_key("before"), {})
    postgres.stop()
    try:
        with pytest.raises(StoreError) as caught:
            store.get(mesh_key("before"))
        message = str(caught.value)
        assert f"127.0.0.1:{postgres.port}/" in message and "refused" in message
        assert store.config.password not in message
    finally:
        postgres.start()
    # Pooled connections died with the server; none of them is handed out again.
    assert store.get(mesh_key("before")) is not None
    store.upsert(mesh_key("after"), {})
    assert [r.key.name for r in store.list("Mesh")[0]] == ["after", "before"]


def _migrate_cli(postgres: PostgresServer, db: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUMA_")} | postgres.env(db)
    return subprocess.run(
        [str(KUMA_CP), "migrate", "up"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_migrate_up_applies_once_then_is_a_no_op(postgres: PostgresServer) -> None:
    db = postgres.new_database()
    first = _migrate_cli(postgres, db)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (
        f"migrated the PostgreSQL database 127.0.0.1:{postgres.port}/{db} from version 0 to {SCHEMA_VERSION}"
    )
    again = _migrate_cli(postgres, db)
    assert again.returncode == 0, again.stderr
    assert f"is already at version {SCHEMA_VERSION}: nothing to migrate" in again.stdout
    PostgresStore(postgres.config(db)).close()


def test_two_instances_migrating_at_once_are_safe(postgres: PostgresServer) -> None:
    db = postgres.new_database()
    config = postgres.config(db)
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with connect(config) as conn:
                done = migrate_up(conn, db)
            results.append((done.before, done.after))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sorted(results) == [(0, SCHEMA_VERSION), (SCHEMA_VERSION, SCHEMA_VERSION)]


def test_an_unmigrated_or_newer_database_is_refused(postgres: PostgresServer) -> None:
    db = postgres.new_database()
    with pytest.raises(StoreError) as caught:
        PostgresStore(postgres.config(db))
    assert str(caught.value) == (
        f"the PostgreSQL database 127.0.0.1:{postgres.port}/{db} has schema version 0, this kuma-cp needs "
        f"{SCHEMA_VERSION}: run `kuma-cp migrate up`"
    )
    with connect(postgres.config(db)) as conn:
        migrate_up(conn, db)
    postgres.admin("UPDATE schema_version SET version = 99", db=db)
    with pytest.raises(
        StoreError, match=rf"version 99, newer than this kuma-cp knows \({SCHEMA_VERSION}\): upgrade"
    ):
        PostgresStore(postgres.config(db))


def test_bad_credentials_are_named_without_the_password(postgres: PostgresServer) -> None:
    config: PostgresConfig = postgres.config(migrated_database(postgres), password="not-the-password")
    with pytest.raises(StoreError, match="password authentication failed") as caught:
        PostgresStore(config)
    assert "not-the-password" not in str(caught.value)


def test_leader_lock_moves_when_the_holders_backend_is_killed(
    open_store: Callable[..., PostgresStore], postgres: PostgresServer
) -> None:
    first, second = open_store().leader_lock(), open_store().leader_lock()
    try:
        assert first.try_acquire() is True
        assert second.try_acquire() is False
        assert first.still_held() and not second.still_held()
        _terminate(postgres, first.name)  # type: ignore[attr-defined]
        assert first.still_held() is False
        wait_until(second.try_acquire, timeout=10, what="the second instance takes the lock")
        assert second.still_held()
        assert first.try_acquire() is False  # reconnects, and finds it taken
        second.release()
        wait_until(first.try_acquire, timeout=10, what="the lock is free after release")
    finally:
        first.release()
        second.release()


def test_kuma_cp_waits_for_postgres_then_becomes_ready(postgres: PostgresServer, lab: Lab) -> None:
    db = migrated_database(postgres)
    postgres.stop()
    try:
        cp = lab.start_control_plane(**postgres.env(db))
        wait_until(
            lambda: (
                cp.proc.log.read_text().count(f"cannot reach PostgreSQL at 127.0.0.1:{postgres.port}/{db}")
                >= 2
            ),
            timeout=15,
            what="kuma-cp retrying to reach PostgreSQL",
        )
        assert cp.proc.popen.poll() is None
    finally:
        postgres.start()
    wait_until(
        lambda: httpx.get(f"{cp.diagnostics_url}/ready", timeout=1).status_code == 200,
        timeout=30,
        what="kuma-cp ready",
        retry_on=(httpx.HTTPError,),
    )
    assert "retrying in 1s" in cp.proc.log.read_text()


def test_kuma_cp_exits_on_an_unmigrated_database_without_retrying(postgres: PostgresServer, lab: Lab) -> None:
    db = postgres.new_database()
    cp = lab.start_control_plane(**postgres.env(db))
    assert cp.proc.popen.wait(timeout=30) != 0
    log = cp.proc.log.read_text()
    assert "has schema version 0, this kuma-cp needs" in log and "run `kuma-cp migrate up`" in log
    assert "retrying" not in log


@pytest.mark.parametrize(
    ("mode", "sslmode"),
    [
        ("disable", "disable"),
        ("verifyNone", "require"),
        ("verifyCa", "verify-ca"),
        ("verifyFull", "verify-full"),
    ],
)
def test_kuma_settings_become_libpq_parameters(mode: str, sslmode: str) -> None:
    env = {
        "KUMA_STORE_POSTGRES_TLS_MODE": mode,
        "KUMA_STORE_POSTGRES_TLS_CA_PATH": "/etc/ca.pem",
        "KUMA_STORE_POSTGRES_CONNECTION_TIMEOUT": "7",
    }
    config = load_config(None, env=env).store.postgres
    params = conninfo_to_dict(conninfo(config))
    assert params["sslmode"] == sslmode and params["sslrootcert"] == "/etc/ca.pem"
    assert (params["host"], params["port"], params["dbname"], params["connect_timeout"]) == (
        "127.0.0.1",
        "15432",  # Kuma's default, not PostgreSQL's 5432
        "kuma",
        "7",
    )


def test_bad_postgres_settings_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="KUMA_STORE_POSTGRES_TLS_MODE: 'verify' is not one of"):
        load_config(None, env={"KUMA_STORE_POSTGRES_TLS_MODE": "verify"})
    with pytest.raises(ConfigError, match="KUMA_STORE_POSTGRES_RESYNC_INTERVAL"):
        load_config(None, env={"KUMA_STORE_POSTGRES_RESYNC_INTERVAL": "0s"})
    with pytest.raises(ConfigError, match="KUMA_STORE_POSTGRES_MIN_OPEN_CONNECTIONS"):
        load_config(
            None,
            env={
                "KUMA_STORE_POSTGRES_MIN_OPEN_CONNECTIONS": "9",
                "KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS": "2",
            },
        )


def test_an_unreadable_row_is_skipped_and_logged_once(
    open_store: Callable[..., PostgresStore], postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store()
    store.upsert(mesh_key("good"), {})
    store.upsert(mesh_key("bad"), {})
    postgres.admin("UPDATE resources SET spec = '[not json' WHERE name = 'bad'", db=store.config.db_name)
    caplog.set_level(logging.ERROR, logger="control_plane.store.postgres")
    for _ in range(2):
        assert store.list("Mesh") == ([store.get(mesh_key("good"))], 1)
        assert store.get(mesh_key("bad")) is None
    logged = [
        r.getMessage() for r in caplog.records if "skipping the unreadable row Mesh//bad" in r.getMessage()
    ]
    assert len(logged) == 1, logged


def test_resyncs_racing_local_writes_keep_the_notification_thread_alive(
    open_store: Callable[..., PostgresStore], caplog: pytest.LogCaptureFixture
) -> None:
    # At N=2,000 a resync iterated the versions dict the writers were updating ("dictionary changed
    # size during iteration"): the notification thread died and the other instance's changes never
    # arrived again. Resync every 10 ms while 8 threads write through the same store.
    a, b = open_store(resync_interval=0.01), open_store(resync_interval=600.0)
    a.upsert(mesh_key("default"), {})
    a.upsert_all([Write(dataplane_key(f"big-{i}"), SPEC) for i in range(3000)])  # long resync loops
    stop = threading.Event()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads interleave often, as under a 2,000-proxy load

    def write(worker: int) -> None:
        n = 0
        while not stop.is_set():
            a.upsert(dataplane_key(f"dp-{worker}-{n}"), SPEC)  # new keys: the dict grows
            n += 1

    threads = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: a.list("Dataplane")[1] >= 4000, timeout=30)
    finally:
        sys.setswitchinterval(switch)
        stop.set()
        for thread in threads:
            thread.join(10)
    assert a._listener.is_alive()
    assert "the change notification thread failed" not in caplog.text
    seen_by_a = _events(a)
    b.upsert(mesh_key("later"), {})
    wait_until(
        lambda: ChangeEvent("upsert", mesh_key("later")) in seen_by_a, timeout=5, what="A still hears B"
    )


def test_a_failing_listener_neither_fails_the_write_nor_stops_the_notifications(
    open_store: Callable[..., PostgresStore], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = open_store(resync_interval=600.0), open_store(resync_interval=600.0)

    def broken(event: ChangeEvent) -> None:
        raise RuntimeError("a listener's bug")

    b.subscribe(broken)
    seen_by_b = _events(b)
    a.upsert(mesh_key("one"), {})
    b.upsert(mesh_key("own"), {})  # b's own write: its listeners run in this thread
    a.upsert(mesh_key("two"), {})
    wait_until(lambda: ChangeEvent("upsert", mesh_key("two")) in seen_by_b, timeout=5, what="B still hears A")
    assert "a store listener failed" in caplog.text
