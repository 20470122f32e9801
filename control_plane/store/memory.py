"""In-memory store (KUMA_STORE_TYPE=memory): for tests and throwaway control planes."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from control_plane.store.base import (
    ChangeEvent,
    ConflictError,
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
            for write in writes:  # check every version first: all or nothing
                old = self._items.get(write.key)
                if (
                    write.expected_version is not None
                    and (old.version if old else 0) != write.expected_version
                ):
                    raise ConflictError(f"{write.key.type} {write.key.name!r} was changed by someone else")
            results = [self._upsert(write) for write in writes]
        for write in writes:
            self._notify(ChangeEvent("upsert", write.key))
        return results

    def _upsert(self, write: Write) -> tuple[StoredResource, bool]:
        old = self._items.get(write.key)
        now = now_rfc3339()
        stored = StoredResource(
            key=write.key,
            spec=write.spec,
            version=(old.version + 1) if old else 1,
            creation_time=old.creation_time if old else now,
            modification_time=now,
        )
        self._items[write.key] = stored
        return stored, old is None

    def delete(self, key: ResourceKey, expected_version: int | None = None) -> bool:
        with self._lock:
            old = self._items.get(key)
            if old is None:
                return False
            if expected_version is not None and old.version != expected_version:
                raise ConflictError(f"{key.type} {key.name!r} was changed by someone else")
            del self._items[key]
        self._notify(ChangeEvent("delete", key))
        return True

    def delete_mesh_contents(self, mesh: str) -> int:
        with self._lock:
            keys = [k for k in self._items if k.mesh == mesh]
            for k in keys:
                del self._items[k]
        for k in keys:
            self._notify(ChangeEvent("delete", k))
        return len(keys)
