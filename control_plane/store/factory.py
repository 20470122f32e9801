"""Open the resource store the configuration asks for."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from control_plane.config import CpConfig
from control_plane.store.base import ResourceStore, StoreError
from control_plane.store.memory import MemoryStore
from control_plane.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

DB_FILE_NAME = "kuma.db"
# PostgreSQL unreachable at start (e.g. started together with the control plane): retry forever.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 10.0
WORK_DIR_MODE = 0o700


def sqlite_path(config: CpConfig) -> Path:
    return config.general.work_dir / DB_FILE_NAME


def ensure_work_dir(work_dir: Path) -> None:
    """Create the work dir owner-only if missing (it holds the store and the CP's TLS key)."""
    try:
        work_dir.mkdir(mode=WORK_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the work dir {work_dir} (general.workDir): {exc.strerror}") from None
    if not work_dir.is_dir():
        raise StoreError(f"the work dir {work_dir} (general.workDir) is not a directory")


def open_store(config: CpConfig, wait: bool = True) -> ResourceStore:
    """The store of `config.store.type`; raise StoreError with a message a user can act on.

    `wait`: a PostgreSQL that cannot be reached is retried (1 s doubling to 10 s) until it answers;
    bad credentials or a schema to migrate are not (retrying would not fix them)."""
    kind = config.store.type
    ensure_work_dir(config.general.work_dir)  # every store: the CP's certificate lives there too
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(sqlite_path(config))
    if kind == "postgres":
        return _open_postgres(config, wait)
    raise StoreError(f"unknown store type {kind!r} (KUMA_STORE_TYPE)")


def _open_postgres(config: CpConfig, wait: bool) -> ResourceStore:
    from control_plane.store.postgres import PostgresStore, UnreachableError  # psycopg only if used

    delay = RETRY_FIRST_S
    while True:
        try:
            return PostgresStore(config.store.postgres)
        except UnreachableError as exc:
            if not wait:
                raise
            log.warning("%s; retrying in %gs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
