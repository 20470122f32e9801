"""In-memory store (KUMA_STORE_TYPE=memory): for tests and throwaway control planes."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from control_plane.store.base import (
    ChangeEvent,
    ConflictError,
    Guard,
    MissingError,
    ResourceKey,
    ResourceStore,
    StoredResource,
    Write,
    now_rfc3339,
)


@dataclass
class MemoryStore(ResourceStore):
    _items: dict[ResourceKey, StoredResource] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def get(self, key: ResourceKey) -> StoredResource | None:
        with self._lock:
            return self._items.get(key)

    def list(
        self, type: str, mesh: str | None = None, offset: int = 0, limit: int | None = None
    ) -> tuple[list[StoredResource], int]:
        with self._lock:
            found = [r for k, r in self._items.items() if k.type == type and (mesh is None or k.mesh == mesh)]
        found.sort(key=lambda r: (r.key.mesh, r.key.name))
        end = None if limit is None else offset + limit
        return found[offset:end], len(found)

    def upsert_all(self, writes: Sequence[Write]) -> list[tuple[StoredResource, bool]]:
        with self._lock:
            self._check(writes)  # every condition first: all or nothing
            results = [self._upsert(write) for write in writes]
        for write in writes:
            self._notify(ChangeEvent("upsert", write.key))
        return results

    def _check(self, writes: Sequence[Write]) -> None:
        written = {write.key for write in writes}
        for write in writes:
            old = self._items.get(write.key)
            if write.expected_version is not None and (old.version if old else 0) != write.expected_version:
                raise ConflictError(f"{write.key.type} {write.key.name!r} was changed by someone else")
            for needed in (write.requires, write.owner):
                if needed is not None and needed not in self._items and needed not in written:
                    raise MissingError(needed)

    def _upsert(self, write: Write) -> tuple[StoredResource, bool]:
        old = self._items.get(write.key)
        now = now_rfc3339()
        stored = StoredResource(
            key=write.key,
            spec=write.spec,
            version=(old.version + 1) if old else 1,
            creation_time=old.creation_time if old else now,
            modification_time=now,
            owner=write.owner,
        )
        self._items[write.key] = stored
        return stored, old is None

    def delete(
        self,
        key: ResourceKey,
        expected_version: int | None = None,
        cascade_mesh: bool = False,
        guards: Sequence[Guard] = (),
    ) -> bool:
        with self._lock:
            old = self._items.get(key)
            if old is None:
                return False
            if expected_version is not None and old.version != expected_version:
                raise ConflictError(f"{key.type} {key.name!r} was changed by someone else")
            for guard, version in guards:
                held = self._items.get(guard)
                if (held.version if held else 0) != version:
                    raise ConflictError(f"{guard.type} {guard.name!r} was changed by someone else")
            doomed = self._doomed(key, cascade_mesh)
            for k in doomed:
                del self._items[k]
        for k in doomed:
            self._notify(ChangeEvent("delete", k))
        return True

    def _doomed(self, key: ResourceKey, cascade_mesh: bool) -> list[ResourceKey]:
        """`key`, then (with cascade_mesh) its mesh's contents, then whatever those own, transitively."""
        owned: dict[ResourceKey, list[ResourceKey]] = {}
        for k, item in self._items.items():
            if item.owner is not None:
                owned.setdefault(item.owner, []).append(k)
        doomed = [key]
        if cascade_mesh and key.name:
            doomed += [k for k in self._items if k.mesh == key.name]
        seen = set(doomed)
        for owner in doomed:  # grows while iterated: breadth-first over ownership
            for k in owned.get(owner, ()):
                if k not in seen:
                    seen.add(k)
                    doomed.append(k)
        return doomed
