"""The PostgreSQL store's schema and its migrations (`kuma-cp migrate up`).

Several control-plane instances share one database, so none of them changes the schema when it
starts (two of them on different versions would fight): an operator runs `kuma-cp migrate up`
once per upgrade, and an instance refuses a database whose schema is not exactly its own.

Names collate "C" (byte order, as SQLite and the memory store sort) whatever the database's locale.
The spec is TEXT holding JSON rather than JSONB: JSONB reorders an object's keys, and the store
gives back a resource's document as it was written (as SQLite does).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import psycopg

from control_plane.store.base import StoreError

# MIGRATIONS[i] takes the schema from version i to i + 1; append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE resources (
        type TEXT COLLATE "C" NOT NULL,
        mesh TEXT COLLATE "C" NOT NULL,
        name TEXT COLLATE "C" NOT NULL,
        spec TEXT NOT NULL,
        version BIGINT NOT NULL,
        creation_time TEXT NOT NULL,
        modification_time TEXT NOT NULL,
        owner_type TEXT,
        owner_mesh TEXT,
        owner_name TEXT,
        PRIMARY KEY (type, mesh, name)
    );
    CREATE INDEX resources_by_mesh ON resources (mesh);
    CREATE INDEX resources_by_owner ON resources (owner_type, owner_mesh, owner_name);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for `name` (PostgreSQL's lock keys are bigint)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


MIGRATE_LOCK = advisory_key("kuma-cp-migrate")


@dataclass(frozen=True)
class Migration:
    before: int
    after: int


def current_version(conn: psycopg.Connection) -> int:
    """The database's schema version; 0 when it has none (an empty database)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(found[0]) if found and found[0] is not None else 0


def migrate_up(conn: psycopg.Connection, where: str) -> Migration:
    """Apply the missing migrations in one transaction under an advisory lock: a second instance
    migrating at the same time waits, then finds nothing left to do. `conn` is in autocommit."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        before = current_version(conn)
        if before > SCHEMA_VERSION:
            raise StoreError(_newer(where, before))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        for script in MIGRATIONS[before:]:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement.encode())
        if before != SCHEMA_VERSION:
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
    return Migration(before, SCHEMA_VERSION)


def check_version(conn: psycopg.Connection, where: str) -> None:
    """StoreError unless the database has exactly this kuma-cp's schema."""
    found = current_version(conn)
    if found > SCHEMA_VERSION:
        raise StoreError(_newer(where, found))
    if found < SCHEMA_VERSION:
        raise StoreError(
            f"the PostgreSQL database {where} has schema version {found}, this kuma-cp needs "
            f"{SCHEMA_VERSION}: run `kuma-cp migrate up`"
        )


def _newer(where: str, found: int) -> str:
    return (
        f"the PostgreSQL database {where} has schema version {found}, newer than this kuma-cp knows "
        f"({SCHEMA_VERSION}): upgrade kuma-cp"
    )
