"""Keeps every connected proxy's snapshot in step with the store.

Store listeners run on the writing thread after commit, so changes are handed to the event loop
with `call_soon_threadsafe`, collected for a short debounce, and then each affected mesh is read
and generated once (in a worker thread, to keep the loop free for the streams) for all its
connected proxies. A proxy whose Dataplane is not in the store gets no snapshot (Envoy waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.config import DnsServerConfig
from control_plane.diagnostics.metrics import GENERATED, PROXY_TYPE_DATAPLANE, CpMetrics
from control_plane.dns.allocator import read_vips
from control_plane.dns.records import MeshNames
from control_plane.dns.vips import VIPS_TYPE
from control_plane.policies.core.rules import MeshPolicies
from control_plane.policies.loading import load_mesh_policies
from control_plane.policies.registry import POLICY_TYPES
from control_plane.resources.dataplane import Dataplane
from control_plane.resources.mesh import Mesh
from control_plane.resources.registry import DATAPLANE, MESH, InvalidResource, parse_resource
from control_plane.store.base import ChangeEvent, ResourceStore, mesh_key
from control_plane.xds.cache import Packer, Snapshot, SnapshotCache, build_snapshot
from control_plane.xds.generate.endpoints import EndpointIndex
from control_plane.xds.generate.snapshot import (
    MissingWorkdir,
    ProxyContext,
    SnapshotGenerator,
    generate_snapshot,
)
from control_plane.xds.names import InvalidNodeId, parse_node_id
from kuma_common.dp_contract import WORKDIR_METADATA_KEY

log = logging.getLogger(__name__)

DEFAULT_DEBOUNCE_S = 0.05
RETRY_S = 1.0
# What the generator reads (see `_view`); changes to anything else (tokens, signing keys, the
# lifecycle's registration records) leave every proxy's config as it is.
XDS_INPUTS = frozenset({MESH.name, DATAPLANE.name, VIPS_TYPE, *(t.kind for t in POLICY_TYPES)})
# A view's packer also keeps each proxy's own messages of every pass (~6 per proxy): start afresh
# when it holds this many per Dataplane (proxies reconnecting many times, the mesh unchanged).
PACKED_PER_DATAPLANE_LIMIT = 25
BUILD_CHUNK = 100  # proxies built per worker-thread call (see _reconcile_mesh)


@dataclass
class MeshView:
    """One mesh as read from the store, with what its proxies share (endpoint index, the outbound
    part of transparent proxies, packed resources). Kept until the mesh changes, so a proxy that
    connects costs its own part only, not a re-read and rebuild of the whole mesh."""

    dataplanes: list[Dataplane]
    by_name: dict[str, Dataplane]
    mesh: Mesh | None
    policies: MeshPolicies
    index: EndpointIndex
    packer: Packer = field(default_factory=Packer)

    def outgrown(self) -> bool:
        return self.packer.size > PACKED_PER_DATAPLANE_LIMIT * (len(self.dataplanes) + 1)


class Reconciler:
    def __init__(
        self,
        store: ResourceStore,
        cache: SnapshotCache,
        *,
        generator: SnapshotGenerator = generate_snapshot,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        dns: DnsServerConfig | None = None,
        metrics: CpMetrics | None = None,
    ) -> None:
        """`dns`: service names settings; None or `service_vip_enabled: false` leaves them out."""
        self._store = store
        self._metrics = metrics or CpMetrics()
        self._dns = dns if dns is not None and dns.service_vip_enabled else None
        self._cache = cache
        self._generator = generator
        self._debounce_s = debounce_s
        self._streams: Counter[str] = Counter()  # node id → open streams
        self._contexts: dict[str, ProxyContext] = {}  # node id → what its latest stream told us
        self._dirty_meshes: set[str] = set()
        self._dirty_nodes: set[str] = set()
        self._wake = asyncio.Event()
        self._busy = False  # a rebuild pass is running
        self._views: dict[str, MeshView] = {}  # mesh → its view, while unchanged
        self._generations: Counter[str] = Counter()  # mesh → changes seen (a view is of one)

    # --- called from the event loop by the stream hooks -------------------------------------
    def track(self, node_id: str, metadata: Mapping[str, Any] | None = None) -> None:
        """A stream of `node_id` opened; `metadata` is its Envoy node metadata (`workdir`, ...)."""
        self._streams[node_id] += 1
        self._contexts[node_id] = proxy_context(metadata or {})
        self._dirty_nodes.add(node_id)
        self._wake.set()

    def untrack(self, node_id: str) -> None:
        self._streams[node_id] -= 1
        if self._streams[node_id] <= 0:
            del self._streams[node_id]
            self._contexts.pop(node_id, None)
            self._cache.clear(node_id)

    def connected_nodes(self) -> list[str]:
        return sorted(self._streams)

    def settled(self) -> bool:
        """Every change seen so far is in the cache: nothing pending, no rebuild running."""
        return not self._wake.is_set() and not self._busy

    # --- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        def on_change(event: ChangeEvent) -> None:  # any thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
                loop.call_soon_threadsafe(self._mark, event)

        unsubscribe = self._store.subscribe(on_change)
        try:
            while True:
                await self._wake.wait()
                self._busy = True
                if self._dirty_nodes:
                    # A proxy just connected and waits for its first config: answer it now; the
                    # debounce is for bursts of store changes, not for start-up latency.
                    await self._reconcile(new_nodes_only=True)
                if self._dirty_meshes:
                    await asyncio.sleep(self._debounce_s)
                self._wake.clear()
                await self._reconcile()
                self._busy = False
        finally:
            unsubscribe()

    def _mark(self, event: ChangeEvent) -> None:
        if event.key.type not in XDS_INPUTS:
            return
        mesh = event.key.name if event.key.type == MESH.name else event.key.mesh
        if mesh:
            self._generations[mesh] += 1
            self._views.pop(mesh, None)
            self._dirty_meshes.add(mesh)
            self._wake.set()

    async def _reconcile(self, new_nodes_only: bool = False) -> None:
        targets = self._targets(new_nodes_only)
        if not new_nodes_only:
            self._dirty_meshes = set()
        self._dirty_nodes = set()
        if not targets:
            return
        for mesh, node_ids in targets.items():
            if not await self._reconcile_mesh(mesh, node_ids):
                await asyncio.sleep(RETRY_S)
                self._dirty_meshes.add(mesh)
                self._wake.set()

    async def _reconcile_mesh(self, mesh: str, node_ids: list[str]) -> bool:
        """Rebuild `node_ids` from one view of the mesh, in chunks: each chunk's snapshots are
        set (and pushed) while the next is built, so the first proxies get a change after a
        chunk's build, not after the whole mesh's. False if the store could not be read."""
        generation, view = self._generations[mesh], self._views.get(mesh)
        for start in range(0, len(node_ids), BUILD_CHUNK):
            chunk = node_ids[start : start + BUILD_CHUNK]
            try:
                built, view = await asyncio.to_thread(self._build, mesh, chunk, view)
            except Exception:  # e.g. the store is unreachable: keep the proxies' config and retry
                log.exception("could not rebuild the configuration of mesh %s; retrying", mesh)
                return False
            if self._generations[mesh] == generation:  # else the mesh changed meanwhile
                self._views[mesh] = view
            self._apply(built)
        if view is not None and view.outgrown() and self._views.get(mesh) is view:
            del self._views[mesh]
        return True

    def _apply(self, built: Mapping[str, Snapshot | None]) -> None:
        for node_id, snapshot in built.items():
            if node_id not in self._streams:
                continue  # disconnected while we were building
            if snapshot is None:
                self._cache.clear(node_id)
            else:
                self._cache.set_snapshot(node_id, snapshot)

    def _targets(self, new_nodes_only: bool = False) -> dict[str, list[str]]:
        """mesh → node ids to rebuild: every connected node of a changed mesh, plus new nodes."""
        meshes = set() if new_nodes_only else self._dirty_meshes
        # Only new nodes: look at those alone (proxies connect a few at a time, a fleet of them).
        candidates = [n for n in self._dirty_nodes if n in self._streams] if new_nodes_only else self._streams
        targets: dict[str, set[str]] = {}
        for node_id in candidates:
            mesh, _ = _split(node_id)
            if mesh and (mesh in meshes or node_id in self._dirty_nodes):
                targets.setdefault(mesh, set()).add(node_id)
        return {mesh: sorted(nodes) for mesh, nodes in targets.items()}

    # --- worker thread: reads the store and generates, touches nothing shared -----------------
    def _build(
        self, mesh_name: str, node_ids: list[str], view: MeshView | None
    ) -> tuple[dict[str, Snapshot | None], MeshView]:
        """Snapshots of `node_ids` from `view`, read from the store first if None."""
        contexts = dict(self._contexts)  # a copy: the loop may change the dict meanwhile
        view = view or self._view(mesh_name)
        return self._build_mesh(view, node_ids, contexts), view

    def _view(self, mesh_name: str) -> MeshView:
        dataplanes = self._dataplanes(mesh_name)
        return MeshView(
            dataplanes=dataplanes,
            by_name={dp.name: dp for dp in dataplanes},
            mesh=self._mesh(mesh_name),
            policies=load_mesh_policies(self._store, mesh_name),
            index=EndpointIndex(dataplanes, self._names(mesh_name)),
        )

    def _names(self, mesh_name: str) -> MeshNames | None:
        if self._dns is None:
            return None
        vips = read_vips(self._store, mesh_name).ips()
        return MeshNames.of(vips, self._dns.domain, self._dns.service_vip_port)

    def _build_mesh(
        self, view: MeshView, node_ids: Iterable[str], contexts: Mapping[str, ProxyContext]
    ) -> dict[str, Snapshot | None]:
        built: dict[str, Snapshot | None] = {}
        for node_id in node_ids:
            dataplane = view.by_name.get(_split(node_id)[1])
            if dataplane is None:
                built[node_id] = None
                continue
            context = contexts.get(node_id, ProxyContext())
            start = time.perf_counter()
            try:
                resources = self._generator(
                    dataplane,
                    view.dataplanes,
                    view.mesh,
                    endpoints=view.index,
                    context=context,
                    policies=view.policies,
                )
                built[node_id] = build_snapshot(resources, view.packer)
                self._metrics.xds_generation.labels(PROXY_TYPE_DATAPLANE, GENERATED).observe(
                    (time.perf_counter() - start) * 1000
                )
            except MissingWorkdir as exc:  # the proxy's set-up, not a bug: say what, no traceback
                self._metrics.xds_generation_errors.inc()
                log.warning("%s", exc)
            except Exception:  # a generator bug must not stop the other proxies' updates
                self._metrics.xds_generation_errors.inc()
                log.exception("could not generate the configuration of %s; it keeps its last one", node_id)
        return built

    def _dataplanes(self, mesh_name: str) -> list[Dataplane]:
        stored, _ = self._store.list("Dataplane", mesh=mesh_name)
        dataplanes = []
        for item in stored:
            try:
                dataplanes.append(Dataplane.model_validate({**item.document()}))
            except ValueError as exc:  # written by an older version, or by hand into the DB
                log.warning("skipping invalid Dataplane %s/%s: %s", mesh_name, item.key.name, exc)
        return dataplanes

    def _mesh(self, mesh_name: str) -> Mesh | None:
        stored = self._store.get(mesh_key(mesh_name))
        if stored is None:
            return None
        try:
            model = parse_resource(stored.document())
        except InvalidResource as exc:
            log.warning("mesh %s is not valid, generating without it: %s", mesh_name, exc)
            return None
        return model if isinstance(model, Mesh) else None


def proxy_context(metadata: Mapping[str, Any]) -> ProxyContext:
    workdir = metadata.get(WORKDIR_METADATA_KEY)
    return ProxyContext(workdir=workdir if isinstance(workdir, str) and workdir else None)


def mesh_of(node_id: str) -> str:
    """The mesh of a node id (`mesh.name`), "" if it is not one."""
    return _split(node_id)[0]


def _split(node_id: str) -> tuple[str, str]:
    try:
        return parse_node_id(node_id)
    except InvalidNodeId:
        return "", ""
