"""The resource store contract shared by every backend (memory, SQLite, later PostgreSQL).

A stored resource is a `StoredResource`: its type, mesh and name, the validated spec as a plain
dict (the universal document without type/mesh/name), timestamps and a version that changes on
every write. Methods are synchronous and safe to call from any thread; each write is one
transaction. Listeners are called after a write has committed, from the writing thread: they must
be quick and thread-safe (e.g. `loop.call_soon_threadsafe(event.set)`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from control_plane.resources.common import DEFAULT_MESH


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ResourceKey:
    type: str  # e.g. "Dataplane"
    mesh: str  # "" for global (non mesh-scoped) types such as Mesh
    name: str


@dataclass(frozen=True)
class StoredResource:
    key: ResourceKey
    spec: dict[str, Any]
    version: int
    creation_time: str
    modification_time: str

    def document(self) -> dict[str, Any]:
        """The universal JSON form: type, mesh (if scoped), name, timestamps, then the spec."""
        doc: dict[str, Any] = {"type": self.key.type}
        if self.key.mesh:
            doc["mesh"] = self.key.mesh
        doc["name"] = self.key.name
        doc["creationTime"] = self.creation_time
        doc["modificationTime"] = self.modification_time
        doc.update(self.spec)
        return doc


@dataclass(frozen=True)
class ChangeEvent:
    op: Literal["upsert", "delete"]
    key: ResourceKey


Listener = Callable[[ChangeEvent], None]


@dataclass(frozen=True)
class Write:
    """One upsert of a batch; `expected_version` as in `upsert` (0: must not exist yet)."""

    key: ResourceKey
    spec: dict[str, Any]
    expected_version: int | None = None


class StoreError(Exception):
    """A store failure a caller can report (e.g. a write conflict)."""


class ConflictError(StoreError):
    """`expected_version` did not match the stored version."""


@dataclass
class ResourceStore:
    """Base class: listener bookkeeping. Backends implement the five data methods."""

    _listeners: list[Listener] = field(default_factory=list, init=False)
    _listeners_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._listeners_lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, event: ChangeEvent) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)

    # --- data methods -------------------------------------------------------------------------
    def get(self, key: ResourceKey) -> StoredResource | None:
        raise NotImplementedError

    def list(
        self, type: str, mesh: str | None = None, offset: int = 0, limit: int | None = None
    ) -> tuple[list[StoredResource], int]:
        """Resources of `type` (in `mesh` if given) ordered by (mesh, name), and the total count."""
        raise NotImplementedError

    def upsert(
        self, key: ResourceKey, spec: dict[str, Any], expected_version: int | None = None
    ) -> tuple[StoredResource, bool]:
        """Create or replace; returns the stored resource and whether it was created."""
        return self.upsert_all([Write(key, spec, expected_version)])[0]

    def upsert_all(self, writes: Sequence[Write]) -> list[tuple[StoredResource, bool]]:
        """Several upserts in one transaction: all of them, or (ConflictError) none."""
        raise NotImplementedError

    def delete(self, key: ResourceKey, expected_version: int | None = None) -> bool:
        """Remove; False if it was not there."""
        raise NotImplementedError

    def delete_mesh_contents(self, mesh: str) -> int:
        """Remove every resource scoped to `mesh` (used when the Mesh itself is deleted)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def mesh_key(name: str) -> ResourceKey:
    return ResourceKey("Mesh", "", name)


def dataplane_key(name: str, mesh: str = DEFAULT_MESH) -> ResourceKey:
    return ResourceKey("Dataplane", mesh, name)
