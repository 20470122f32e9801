"""Dataplanes that passed `/bootstrap`, for `/certificate` before their proxy has registered them.

In universal mode a Dataplane enters the store when its Envoy opens the ADS stream, but the agent
asks for its certificate before it starts Envoy. The bootstrap request carried the Dataplane and a
token that proved it, so the CSR endpoint may use that Dataplane (and checks the token against it
again). Entries expire; the store is the truth afterwards. The map is bounded (the oldest entry
goes first), so many names proved by name-less tokens cannot grow it without end.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from control_plane.resources.dataplane import Dataplane

DEFAULT_TTL_S = 600.0
DEFAULT_MAX_ENTRIES = 10_000


class RecentDataplanes:
    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self.max_entries = max_entries
        # Insertion order is expiry order (one TTL for all): expired and excess entries are first.
        self._items: OrderedDict[tuple[str, str], tuple[float, Dataplane]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def remember(self, dataplane: Dataplane) -> None:
        now = self._clock()
        key = (dataplane.mesh, dataplane.name)
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = (now + self._ttl_s, dataplane)
            while self._items:
                oldest = next(iter(self._items.values()))
                if oldest[0] > now and len(self._items) <= self.max_entries:
                    break
                self._items.popitem(last=False)

    def get(self, mesh: str, name: str) -> Dataplane | None:
        with self._lock:
            entry = self._items.get((mesh, name))
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]
