"""Dataplanes that passed `/bootstrap`, for `/certificate` before their proxy has registered them.

In universal mode a Dataplane enters the store when its Envoy opens the ADS stream, but the agent
asks for its certificate before it starts Envoy. The bootstrap request carried the Dataplane and a
token that proved it, so the CSR endpoint may use that Dataplane (and checks the token against it
again). Entries expire; the store is the truth afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from control_plane.resources.dataplane import Dataplane

DEFAULT_TTL_S = 600.0


class RecentDataplanes:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._items: dict[tuple[str, str], tuple[float, Dataplane]] = {}
        self._lock = threading.Lock()

    def remember(self, dataplane: Dataplane) -> None:
        now = self._clock()
        with self._lock:
            self._items = {k: v for k, v in self._items.items() if v[0] > now}  # drop expired ones
            self._items[(dataplane.mesh, dataplane.name)] = (now + self._ttl_s, dataplane)

    def get(self, mesh: str, name: str) -> Dataplane | None:
        with self._lock:
            entry = self._items.get((mesh, name))
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]
