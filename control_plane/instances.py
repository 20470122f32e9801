"""Control-plane instances sharing one store: who they are and which are alive.

Each instance has an id (`<hostname>-<6 hex>`, new per process). On a store several instances share
(PostgreSQL) each writes a heartbeat record (`ControlPlaneInstance`, global, internal) every
HEARTBEAT_S; an instance whose heartbeat is older than its lease is dead, and the proxies connected
to it are treated as disconnected by the leader's deregistration (control_plane/xds/deregistration.py).
On a store only one instance can use (memory, SQLite) there is nothing to share: no heartbeat is
written and the only live instance is this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from control_plane.store.base import ConflictError, ResourceKey, ResourceStore, StoredResource

log = logging.getLogger(__name__)

INSTANCE_TYPE = "ControlPlaneInstance"
HEARTBEAT_S = 2.0
LEASE_S = 3 * HEARTBEAT_S
# A record whose heartbeat stopped this long ago is removed by the leader.
FORGET_AFTER_S = 3600.0


def new_instance_id() -> str:
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


def instance_key(instance_id: str) -> ResourceKey:
    return ResourceKey(INSTANCE_TYPE, "", instance_id)


def heartbeat_of(record: StoredResource) -> float | None:
    value = record.spec.get("heartbeat")
    return float(value) if isinstance(value, int | float) else None


def live(records: Iterable[StoredResource], now: float, lease_s: float = LEASE_S) -> set[str]:
    """The ids of the instances whose heartbeat is within the lease (pure)."""
    alive = set()
    for record in records:
        beat = heartbeat_of(record)
        if beat is not None and now - beat <= lease_s:
            alive.add(record.key.name)
    return alive


@dataclass
class Instances:
    """This instance's id and heartbeat, and the view of the others."""

    store: ResourceStore
    instance_id: str
    heartbeat_s: float = HEARTBEAT_S
    lease_s: float = LEASE_S

    @property
    def shared(self) -> bool:
        return self.store.shared

    def alive(self) -> set[str]:
        """The live instances (this one included); only this one on a store nobody shares."""
        if not self.shared:
            return {self.instance_id}
        records, _ = self.store.list(INSTANCE_TYPE)
        return live(records, time.time(), self.lease_s) | {self.instance_id}

    async def run_heartbeat(self) -> None:
        """Every instance, leader or not, while it runs (a failed beat is logged and retried)."""
        if not self.shared:
            await asyncio.Event().wait()
        failing = False
        while True:
            try:
                spec = {"hostname": socket.gethostname(), "heartbeat": round(time.time(), 3)}
                await asyncio.to_thread(self.store.upsert, instance_key(self.instance_id), spec)
                if failing:
                    log.info("control-plane heartbeat written again")
                failing = False
            except Exception as exc:  # the database away: the lease runs out, others take over
                if not failing:
                    log.warning("could not write this control plane's heartbeat: %s", exc)
                failing = True
            await asyncio.sleep(self.heartbeat_s)

    async def forget_stale(self) -> None:
        """A leader job: remove records of instances gone for FORGET_AFTER_S."""
        while True:
            records, _ = await asyncio.to_thread(self.store.list, INSTANCE_TYPE)
            now = time.time()
            for record in records:
                beat = heartbeat_of(record)
                if beat is None or now - beat > FORGET_AFTER_S:
                    with contextlib.suppress(ConflictError):  # it came back meanwhile
                        await asyncio.to_thread(self.store.delete, record.key, record.version)
            await asyncio.sleep(FORGET_AFTER_S / 10)
