"""Open the resource store the configuration asks for."""

from __future__ import annotations

from pathlib import Path

from control_plane.config import CpConfig
from control_plane.store.base import ResourceStore, StoreError
from control_plane.store.memory import MemoryStore
from control_plane.store.sqlite import SqliteStore

DB_FILE_NAME = "kuma.db"
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


def open_store(config: CpConfig) -> ResourceStore:
    """The store of `config.store.type`; raise StoreError with a message a user can act on."""
    kind = config.store.type
    ensure_work_dir(config.general.work_dir)  # every store: the CP's certificate lives there too
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(sqlite_path(config))
    if kind == "postgres":
        raise StoreError(
            "store type 'postgres' (KUMA_STORE_TYPE) is not supported yet; use 'sqlite' (default) or 'memory'"
        )
    raise StoreError(f"unknown store type {kind!r} (KUMA_STORE_TYPE)")
