"""A store that times every operation of the store it wraps (Kuma's MeteredStore).

Each data method is observed in the `store` histogram by operation (get, list, create, update,
delete) and resource type, and a write refused for its version counts in `store_conflicts`.
Listeners are the wrapped store's: `subscribe` is passed through, so change events are unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from control_plane.diagnostics.metrics import CpMetrics
from control_plane.store.base import (
    ConflictError,
    Guard,
    ResourceKey,
    ResourceStore,
    StoredResource,
    StoreWrapper,
    Write,
)

# The resource_type of a mesh's cascade delete (Kuma has none): it removes every type at once.
ALL_TYPES = "*"


class MeteredStore(StoreWrapper):
    def __init__(self, inner: ResourceStore, metrics: CpMetrics) -> None:
        super().__init__(inner)
        self._metrics = metrics

    @contextmanager
    def _timed(self, operation: str, resource_type: str) -> Iterator[list[str]]:
        """Observe the block; it may replace the operation (`label[0]`) once it knows it."""
        label = [operation]
        start = time.perf_counter()
        try:
            yield label
        except ConflictError:
            self._metrics.store_conflicts.labels(resource_type).inc()
            raise
        finally:
            self._metrics.store.labels(label[0], resource_type).observe(time.perf_counter() - start)

    def get(self, key: ResourceKey) -> StoredResource | None:
        with self._timed("get", key.type):
            return self.inner.get(key)

    def list(
        self, type: str, mesh: str | None = None, offset: int = 0, limit: int | None = None
    ) -> tuple[list[StoredResource], int]:
        with self._timed("list", type):
            return self.inner.list(type, mesh, offset, limit)

    def upsert_all(self, writes: Sequence[Write]) -> list[tuple[StoredResource, bool]]:
        # One transaction, timed once; labelled by its first write (batches are of one kind in
        # practice: kumactl apply of one document, the VIP allocator's per-mesh set).
        # Kuma's create and update are one upsert here: which one it was is known afterwards.
        first = writes[0].key.type if writes else ALL_TYPES
        with self._timed("update", first) as label:
            results = self.inner.upsert_all(writes)
            if results and results[0][1]:
                label[0] = "create"
            return results

    def delete(
        self,
        key: ResourceKey,
        expected_version: int | None = None,
        cascade_mesh: bool = False,
        guards: Sequence[Guard] = (),
    ) -> bool:
        with self._timed("delete", ALL_TYPES if cascade_mesh else key.type):
            return self.inner.delete(key, expected_version, cascade_mesh, guards)
