"""`kuma-cp migrate up`: bring the configured store's schema to this kuma-cp's version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from control_plane.config import CpConfig
from control_plane.store.base import StoreError
from control_plane.store.factory import ensure_work_dir, sqlite_path


def migrate_up(config: CpConfig) -> str:
    """Apply the missing migrations; what was done, in one line. StoreError when it cannot."""
    kind = config.store.type
    if kind == "memory":
        return "the memory store keeps nothing between runs: nothing to migrate"
    if kind == "sqlite":
        return _migrate_sqlite(config)
    return _migrate_postgres(config)


def _migrate_postgres(config: CpConfig) -> str:
    import psycopg

    from control_plane.store import postgres, postgres_schema

    where = postgres.where(config.store.postgres)
    with postgres.connect(config.store.postgres) as conn:
        try:
            done = postgres_schema.migrate_up(conn, where)
        except psycopg.Error as exc:
            raise StoreError(
                f"PostgreSQL at {where}: migration failed: {postgres.reason(exc, config.store.postgres)}"
            ) from None
    return _said(f"the PostgreSQL database {where}", done.before, done.after)


def _migrate_sqlite(config: CpConfig) -> str:
    from control_plane.store.sqlite import SqliteStore

    ensure_work_dir(config.general.work_dir)
    path = sqlite_path(config)
    before = _sqlite_version(path)
    SqliteStore(path).close()  # opening a SQLite store migrates it (one process owns the file)
    return _said(f"the SQLite store {path}", before, _sqlite_version(path))


def _sqlite_version(path: Path) -> int:
    """The file's schema version; 0 when there is no file or no schema in it."""
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        row = conn.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
    return row[0] if row else 0


def _said(what: str, before: int, after: int) -> str:
    if before == after:
        return f"{what} is already at version {after}: nothing to migrate"
    return f"migrated {what} from version {before} to {after}"
