"""SQLite store (KUMA_STORE_TYPE=sqlite, the default): one file `<workDir>/kuma.db`.

One connection shared by every thread behind a lock: SQLite serialises writers anyway, and the
control plane is one process, so a pool would add nothing but contention on the file lock. WAL
mode keeps readers of other processes (e.g. a backup) from blocking us; `busy_timeout` makes us
wait for them instead of failing. Each write is one transaction; listeners run after the commit,
outside the lock.

Failures: any SQLite error comes out as StoreError carrying SQLite's own reason ("database or disk
is full"), never the ROLLBACK's "no transaction is active" that used to hide it (SQLite rolls back
by itself on some errors). A row that cannot be decoded (written by hand, a damaged file) is skipped
by reads and logged once: one bad row must not take every list, and so every xDS rebuild, down.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_plane.store.base import (
    ChangeEvent,
    ConflictError,
    Guard,
    MissingError,
    ResourceKey,
    ResourceStore,
    StoredResource,
    StoreError,
    Write,
    now_rfc3339,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
DB_FILE_MODE = 0o600

# MIGRATIONS[i] takes the schema from version i to i + 1; append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE resources (
        type TEXT NOT NULL,
        mesh TEXT NOT NULL,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        version INTEGER NOT NULL,
        creation_time TEXT NOT NULL,
        modification_time TEXT NOT NULL,
        PRIMARY KEY (type, mesh, name)
    );
    CREATE INDEX resources_by_mesh ON resources (mesh);
    """,
    # 2: owners (a resource deleted with its owner, in the same transaction)
    """
    ALTER TABLE resources ADD COLUMN owner_type TEXT;
    ALTER TABLE resources ADD COLUMN owner_mesh TEXT;
    ALTER TABLE resources ADD COLUMN owner_name TEXT;
    CREATE INDEX resources_by_owner ON resources (owner_type, owner_mesh, owner_name);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    "type, mesh, name, spec, version, creation_time, modification_time, owner_type, owner_mesh, owner_name"
)
# Reads take text as bytes and decode row by row: one row of invalid UTF-8 would otherwise fail the
# whole fetch inside sqlite3, before any row reaches us.
_READ_COLUMNS = ", ".join(f"CAST({col} AS BLOB)" if col != "version" else col for col in _COLUMNS.split(", "))


@dataclass
class SqliteStore(ResourceStore):
    path: Path | str
    _conn: sqlite3.Connection = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _reported: set[tuple[Any, ...]] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        _create_private_file(self.path)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so each write is exactly one
            # transaction; check_same_thread=False: the lock below serialises every use.
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite store {self.path}: {exc}") from None
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(self._conn, self.path)
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot open the SQLite store {self.path}: {exc}") from None
        except StoreError:
            self._conn.close()
            raise

    # --- reads --------------------------------------------------------------------------------
    def get(self, key: ResourceKey) -> StoredResource | None:
        with self._lock, self._failures("reading"):
            row = self._conn.execute(
                f"SELECT {_READ_COLUMNS} FROM resources WHERE type = ? AND mesh = ? AND name = ?",
                (key.type, key.mesh, key.name),
            ).fetchone()
        return None if row is None else self._decode(row)

    def list(
        self, type: str, mesh: str | None = None, offset: int = 0, limit: int | None = None
    ) -> tuple[list[StoredResource], int]:
        where, params = ("type = ?", [type]) if mesh is None else ("type = ? AND mesh = ?", [type, mesh])
        with self._lock, self._failures("reading"), _snapshot(self._conn):  # one for page and total
            total = self._conn.execute(f"SELECT COUNT(*) FROM resources WHERE {where}", params).fetchone()[0]
            rows = self._conn.execute(
                f"SELECT {_READ_COLUMNS} FROM resources WHERE {where} ORDER BY mesh, name LIMIT ? OFFSET ?",
                [*params, -1 if limit is None else limit, offset],
            ).fetchall()
        items = [item for item in map(self._decode, rows) if item is not None]
        return items, total - (len(rows) - len(items))

    def _decode(self, row: tuple[Any, ...]) -> StoredResource | None:
        """The row as a resource, or None (logged once per row version) when it cannot be read."""
        try:
            return _row_to_resource(row)
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            if row[:3] + row[4:5] not in self._reported:
                self._reported.add(row[:3] + row[4:5])
                names = "/".join(bytes(v).decode("utf-8", "replace") for v in row[:3] if v is not None)
                log.error("the SQLite store %s: skipping the unreadable row %s (%s)", self.path, names, exc)
            return None

    @contextlib.contextmanager
    def _failures(self, action: str) -> Iterator[None]:
        """sqlite3's errors as StoreError with SQLite's reason (the caller names no SQL)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"the SQLite store {self.path}: {action} failed: {exc}") from exc

    # --- writes -------------------------------------------------------------------------------
    def upsert_all(self, writes: Sequence[Write]) -> list[tuple[StoredResource, bool]]:
        with self._lock, self._failures("writing"), _transaction(self._conn):
            results = [self._upsert(write) for write in writes]
        for write in writes:
            self._notify(ChangeEvent("upsert", write.key))
        return results

    def _upsert(self, write: Write) -> tuple[StoredResource, bool]:
        """Inside the caller's transaction."""
        key = write.key
        spec_json = json.dumps(write.spec, separators=(",", ":"), sort_keys=False)
        row = self._conn.execute(
            "SELECT version, creation_time FROM resources WHERE type = ? AND mesh = ? AND name = ?",
            (key.type, key.mesh, key.name),
        ).fetchone()
        old_version, creation_time = row if row else (0, None)
        if write.expected_version is not None and old_version != write.expected_version:
            raise ConflictError(f"{key.type} {key.name!r} was changed by someone else")
        for needed in (write.requires, write.owner):
            if needed is not None and not self._exists(needed):
                raise MissingError(needed)
        now = now_rfc3339()
        stored = StoredResource(
            key=key,
            spec=json.loads(spec_json),  # a private copy, as the database will give back
            version=old_version + 1,
            creation_time=creation_time or now,
            modification_time=now,
            owner=write.owner,
        )
        owner = _key_values(write.owner) if write.owner else (None, None, None)
        self._conn.execute(
            f"INSERT OR REPLACE INTO resources ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key.type, key.mesh, key.name, spec_json, stored.version, stored.creation_time, now, *owner),
        )
        return stored, row is None

    def _exists(self, key: ResourceKey) -> bool:
        """Inside the caller's transaction (so it sees the batch's earlier writes)."""
        return (
            self._conn.execute(
                "SELECT 1 FROM resources WHERE type = ? AND mesh = ? AND name = ?", _key_values(key)
            ).fetchone()
            is not None
        )

    def delete(
        self,
        key: ResourceKey,
        expected_version: int | None = None,
        cascade_mesh: bool = False,
        guards: Sequence[Guard] = (),
    ) -> bool:
        with self._lock, self._failures("deleting"), _transaction(self._conn):
            row = self._conn.execute(
                "SELECT version FROM resources WHERE type = ? AND mesh = ? AND name = ?", _key_values(key)
            ).fetchone()
            if row is None:
                return False
            if expected_version is not None and row[0] != expected_version:
                raise ConflictError(f"{key.type} {key.name!r} was changed by someone else")
            for guard, version in guards:
                held = self._conn.execute(
                    "SELECT version FROM resources WHERE type = ? AND mesh = ? AND name = ?",
                    _key_values(guard),
                ).fetchone()
                if (held[0] if held else 0) != version:
                    raise ConflictError(f"{guard.type} {guard.name!r} was changed by someone else")
            doomed = [
                ResourceKey(*found)
                for found in self._conn.execute(
                    _DOOMED, (*_key_values(key), int(cascade_mesh and bool(key.name)), key.name)
                ).fetchall()
            ]
            self._conn.executemany(
                "DELETE FROM resources WHERE type = ? AND mesh = ? AND name = ?", map(_key_values, doomed)
            )
        for gone in doomed:
            self._notify(ChangeEvent("delete", gone))
        return True

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# `key`, with a flag every resource of the mesh `key.name`, and what those own, transitively.
_DOOMED = """
WITH RECURSIVE doomed(type, mesh, name) AS (
    SELECT type, mesh, name FROM resources
     WHERE (type = ? AND mesh = ? AND name = ?) OR (? AND mesh = ?)
    UNION
    SELECT r.type, r.mesh, r.name FROM resources r
      JOIN doomed d ON r.owner_type = d.type AND r.owner_mesh = d.mesh AND r.owner_name = d.name
)
SELECT type, mesh, name FROM doomed
"""


def _key_values(key: ResourceKey) -> tuple[str, str, str]:
    return (key.type, key.mesh, key.name)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raised; the first error is the one raised."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        # IMMEDIATE takes the write lock now, so a read-then-write cannot be overtaken.
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                _roll_back(self._conn)
                raise
        else:
            _roll_back(self._conn)


def _roll_back(conn: sqlite3.Connection) -> None:
    """ROLLBACK if a transaction is still open: on SQLITE_FULL, IOERR, ... SQLite may have rolled
    back already, and a failing ROLLBACK must not replace the error that made us roll back."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: several SELECTs see one state of the database."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        _roll_back(conn)  # nothing was written: ending it either way is the same


def _row_to_resource(row: tuple[Any, ...]) -> StoredResource:
    """A row read with _READ_COLUMNS; UnicodeDecodeError / ValueError / TypeError when it is damaged."""
    type_, mesh, name, spec_json, created, modified = (
        bytes(v).decode("utf-8") for v in (*row[:4], *row[5:7])
    )
    owner_fields = [None if v is None else bytes(v).decode("utf-8") for v in row[7:10]]
    spec = json.loads(spec_json)
    if not isinstance(spec, dict) or type(row[4]) is not int:
        raise ValueError("the spec is not a JSON object or the version not an integer")
    return StoredResource(
        key=ResourceKey(type_, mesh, name),
        spec=spec,
        version=row[4],
        creation_time=created,
        modification_time=modified,
        owner=None if None in owner_fields else ResourceKey(*owner_fields),  # type: ignore[arg-type]
    )


def _create_private_file(path: Path) -> None:
    """Create the database file readable by its owner only (it will hold signing keys later)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, DB_FILE_MODE)
    os.close(fd)
    os.chmod(path, DB_FILE_MODE)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    with _transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        current = row[0] if row else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the SQLite store {path} has schema version {current}, newer than this control plane "
                f"knows ({SCHEMA_VERSION}); upgrade kuma-py or use another work dir"
            )
        for script in MIGRATIONS[current:]:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        else:
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
