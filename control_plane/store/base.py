"""The resource store contract shared by every backend (memory, SQLite, PostgreSQL).

A stored resource is a `StoredResource`: its type, mesh and name, the validated spec as a plain
dict (the universal document without type/mesh/name), timestamps, a version that changes on
every write, and optionally its owner (deleted with it). Methods are synchronous and safe to call
from any thread; each write is one transaction. Stores only persist: the resource rules (validation,
which resource needs which, cascades) are the resource manager's (control_plane/resources/manager.py),
which states them to the store as `Write.requires`, `Write.owner` and `delete(cascade_mesh=...)` so
that they are checked inside the store's transaction.

Listeners are called after a write has committed, from the writing thread, or for a write made by
another control-plane instance on the same database, from the store's notification thread: they
must be quick and thread-safe (e.g. `loop.call_soon_threadsafe(event.set)`). An event is a hint
that a key changed (a listener re-reads the store); a store shared between instances may deliver
one twice, and delivers the ones it missed when its notifications were interrupted (a resync).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from control_plane.resources.common import DEFAULT_MESH

log = logging.getLogger(__name__)


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
    owner: ResourceKey | None = None

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
# (a resource, the version it must have) for a delete to go ahead; version 0: it must not exist.
Guard = tuple[ResourceKey, int]


@dataclass(frozen=True)
class Write:
    """One upsert of a batch; `expected_version` as in `upsert` (0: must not exist yet).

    `requires`: a resource that must exist when the transaction commits (a mesh-scoped resource's
    Mesh), else MissingError and nothing is written; a concurrent delete of it cannot slip in
    between. `owner`: must exist too (MissingError), and this resource is deleted, in the same
    transaction, when its owner is."""

    key: ResourceKey
    spec: dict[str, Any]
    expected_version: int | None = None
    requires: ResourceKey | None = None
    owner: ResourceKey | None = None


class StoreError(Exception):
    """A store failure a caller can report (e.g. a write conflict)."""


class ConflictError(StoreError):
    """`expected_version` did not match the stored version."""


class MissingError(StoreError):
    """A write's `requires` is not in the store."""

    def __init__(self, key: ResourceKey) -> None:
        where = f" in mesh {key.mesh!r}" if key.mesh else ""
        super().__init__(f"{key.type} {key.name!r}{where} does not exist")
        self.key = key


class LeaderLock:
    """Who runs the jobs only one control-plane instance may run. A store no other instance can
    share (memory, SQLite) makes its one instance the leader; PostgreSQL overrides this."""

    def try_acquire(self) -> bool:
        """Take the lock if free; True if this instance holds it now."""
        return True

    def still_held(self) -> bool:
        """Whether the lock taken is still ours (False once the database has let it go)."""
        return True

    def release(self) -> None:
        pass


@dataclass
class ResourceStore:
    """Base class: listener bookkeeping. Backends implement the data methods."""

    # Whether other control-plane instances may use the same data (PostgreSQL): then heartbeats
    # tell which are alive and a lock elects the leader.
    shared = False

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
            try:
                listener(event)
            except Exception:  # one listener's bug must not fail the write or the notifying thread
                log.exception("a store listener failed on %s %s", event.op, event.key)

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

    def delete(
        self,
        key: ResourceKey,
        expected_version: int | None = None,
        cascade_mesh: bool = False,
        guards: Sequence[Guard] = (),
    ) -> bool:
        """Remove `key` and what it owns (transitively); with `cascade_mesh`, also every resource
        scoped to the mesh named `key.name` (`key` is a Mesh). `guards`: other resources that must
        still be at the versions given (0: absent), else ConflictError: "delete this unless that
        changed". One transaction; False if `key` was not there (and then nothing is removed)."""
        raise NotImplementedError

    def leader_lock(self) -> LeaderLock:
        """The lock that elects the one instance running singleton jobs (see LeaderLock)."""
        return LeaderLock()

    def close(self) -> None:
        pass


class StoreWrapper(ResourceStore):
    """A store in front of another (metering, the resource rules): everything is the inner
    store's unless a subclass overrides it; events and the leader lock always are."""

    def __init__(self, inner: ResourceStore) -> None:
        super().__init__()
        self.inner = inner

    @property  # type: ignore[override]
    def shared(self) -> bool:
        return self.inner.shared

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self.inner.subscribe(listener)

    def get(self, key: ResourceKey) -> StoredResource | None:
        return self.inner.get(key)

    def list(
        self, type: str, mesh: str | None = None, offset: int = 0, limit: int | None = None
    ) -> tuple[list[StoredResource], int]:
        return self.inner.list(type, mesh, offset, limit)

    def upsert_all(self, writes: Sequence[Write]) -> list[tuple[StoredResource, bool]]:
        return self.inner.upsert_all(writes)

    def delete(
        self,
        key: ResourceKey,
        expected_version: int | None = None,
        cascade_mesh: bool = False,
        guards: Sequence[Guard] = (),
    ) -> bool:
        return self.inner.delete(key, expected_version, cascade_mesh, guards)

    def leader_lock(self) -> LeaderLock:
        return self.inner.leader_lock()

    def close(self) -> None:
        self.inner.close()


def mesh_key(name: str) -> ResourceKey:
    return ResourceKey("Mesh", "", name)


def dataplane_key(name: str, mesh: str = DEFAULT_MESH) -> ResourceKey:
    return ResourceKey("Dataplane", mesh, name)
