"""Keeps each mesh's virtual IPs (one per service) in the store, in step with its Dataplanes.

A pass over a mesh reads its Dataplanes' services and its stored table, applies `vips.allocate`
and writes the table back only if it changed, with the version it read: two control planes
sharing a store cannot both win; the loser reads the winner's table and tries again. A pass runs
for the meshes whose Dataplanes changed, at most once per `vip_refresh_interval` (Kuma's
KUMA_RUNTIME_UNIVERSAL_VIP_REFRESH_INTERVAL, 500 ms: a new service has its VIP within it), for
every mesh when a service's grace period ends, and every FULL_PASS_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from control_plane.config import DnsServerConfig
from control_plane.dns.vips import VIPS_TYPE, VipTable, allocate, vips_record_name
from control_plane.resources.common import SERVICE_TAG
from control_plane.store.base import ChangeEvent, ConflictError, ResourceKey, ResourceStore, StoredResource

log = logging.getLogger(__name__)

DEBOUNCE_S = 0.05
# Every mesh is read again this often even without a change seen here: what another control plane
# on the same store wrote just before it stopped, or a pass that failed.
FULL_PASS_S = 30.0
CONFLICT_RETRIES = 5


def vips_key(mesh: str) -> ResourceKey:
    return ResourceKey(VIPS_TYPE, mesh, vips_record_name(mesh))


def read_vips(store: ResourceStore, mesh: str) -> VipTable:
    """The mesh's stored table (empty if none or if it cannot be read)."""
    return _table(store.get(vips_key(mesh)), mesh)


def _table(stored: StoredResource | None, mesh: str) -> VipTable:
    if stored is None:
        return VipTable()
    try:
        return VipTable.from_spec(stored.spec)
    except ValueError as exc:
        log.warning("ignoring the unreadable VIP table of mesh %s: %s", mesh, exc)
        return VipTable()


def services_of(dataplane_specs: Iterable[dict[str, Any]]) -> set[str]:
    """The services the Dataplanes' inbounds offer."""
    return set(service_ports(dataplane_specs))


def service_ports(dataplane_specs: Iterable[dict[str, Any]]) -> dict[str, set[int]]:
    """service → the ports its inbounds expose, read from stored specs without full validation
    (they were validated when written)."""
    ports: dict[str, set[int]] = {}
    for spec in dataplane_specs:
        networking = spec.get("networking")
        inbounds = networking.get("inbound") if isinstance(networking, dict) else None
        for inbound in inbounds if isinstance(inbounds, list) else ():
            tags = inbound.get("tags") if isinstance(inbound, dict) else None
            service = tags.get(SERVICE_TAG) if isinstance(tags, dict) else None
            if isinstance(service, str) and service:
                port = inbound.get("port")
                ports.setdefault(service, set()).update([port] if isinstance(port, int) else [])
    return ports


class VipAllocator:
    def __init__(
        self,
        store: ResourceStore,
        config: DnsServerConfig,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._reported: dict[str, frozenset[str]] = {}  # mesh → services last reported unallocated

    async def run(self) -> None:
        if not self._config.service_vip_enabled:
            return
        loop = asyncio.get_running_loop()

        def on_change(event: ChangeEvent) -> None:  # any thread
            if event.key.type in ("Dataplane", "Mesh"):
                with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                    loop.call_soon_threadsafe(self._mark, event.key.mesh or event.key.name)

        unsubscribe = self._store.subscribe(on_change)
        try:
            await self._loop(loop.time)
        finally:
            unsubscribe()

    async def _loop(self, now: Callable[[], float]) -> None:
        interval = self._config.vip_refresh_interval
        ok, next_release = await self._pass(None)
        last = now()
        next_full = last + (FULL_PASS_S if ok else interval)
        while True:
            deadline = next_full
            if next_release is not None:
                until_release = (next_release - self._clock()).total_seconds()
                deadline = min(deadline, now() + max(until_release, 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(deadline - now(), 0.0))
            # At most one pass per refresh interval: a burst of changes (a fleet of proxies
            # connecting) costs one read of the mesh, not one per Dataplane.
            await asyncio.sleep(max(DEBOUNCE_S, last + interval - now()))
            full = now() >= deadline  # every mesh is due, or a grace period ended
            meshes = None if full else self._dirty
            self._wake.clear()
            self._dirty = set()
            ok, next_release = await self._pass(meshes)
            last = now()
            if full or not ok:
                next_full = last + (FULL_PASS_S if ok else interval)

    def _mark(self, mesh: str) -> None:
        self._dirty.add(mesh)
        self._wake.set()

    async def _pass(self, meshes: set[str] | None) -> tuple[bool, datetime | None]:
        """(whether it worked, when a grace period ends next)."""
        try:
            return True, await asyncio.to_thread(self.allocate, meshes)
        except Exception:  # e.g. the store is unreachable: a full pass follows after an interval
            log.exception("could not allocate virtual IPs; retrying")
            return False, None

    # --- worker thread -------------------------------------------------------------------------
    def allocate(self, meshes: set[str] | None = None) -> datetime | None:
        """One pass over `meshes` (every mesh if None); returns when a grace period ends next."""
        existing = {m.key.name for m in self._store.list("Mesh")[0]}
        releases = []
        for mesh in sorted(existing if meshes is None else meshes & existing):
            release = self._allocate_mesh(mesh)
            if release is not None:
                releases.append(release)
        return min(releases, default=None)

    def _allocate_mesh(self, mesh: str) -> datetime | None:
        for _ in range(CONFLICT_RETRIES):
            dataplanes, _ = self._store.list("Dataplane", mesh=mesh)
            stored = self._store.get(vips_key(mesh))
            table = _table(stored, mesh)
            allocation = allocate(
                table,
                services_of(d.spec for d in dataplanes),
                self._config.cidr,
                self._clock(),
                timedelta(seconds=self._config.vip_release_grace_period),
            )
            self._report(mesh, allocation.unallocated)
            spec = allocation.table.to_spec()
            if stored is not None and stored.spec == spec:
                return allocation.next_release
            try:
                self._store.upsert(vips_key(mesh), spec, expected_version=stored.version if stored else 0)
            except ConflictError:
                continue  # another control plane wrote first: start again from its table
            self._log_changes(mesh, table, allocation.table)
            return allocation.next_release
        log.warning("virtual IPs of mesh %s: the table kept changing under us; next pass retries", mesh)
        return None

    def _report(self, mesh: str, unallocated: list[str]) -> None:
        services = frozenset(unallocated)
        if services and self._reported.get(mesh) != services:
            log.error(
                "mesh %s: no virtual IP left in %s (KUMA_DNS_SERVER_CIDR) for %d service(s): %s; "
                "use a larger range",
                mesh,
                self._config.cidr,
                len(services),
                ", ".join(sorted(services)),
            )
        self._reported[mesh] = services

    @staticmethod
    def _log_changes(mesh: str, before: VipTable, after: VipTable) -> None:
        for service, entry in after.entries.items():
            previous = before.entries.get(service)
            if previous is None or previous.ip != entry.ip:
                log.info("mesh %s: service %s has virtual IP %s", mesh, service, entry.ip)
        for service in before.entries.keys() - after.entries.keys():
            log.info(
                "mesh %s: virtual IP %s of service %s released", mesh, before.entries[service].ip, service
            )
