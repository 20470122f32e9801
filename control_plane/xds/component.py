"""The xDS part of the control plane as one object: cache, ADS server, reconciler, lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from control_plane.config import DnsServerConfig, XdsServerLimits
from control_plane.diagnostics.metrics import CpMetrics
from control_plane.instances import Instances, new_instance_id
from control_plane.store.base import ResourceStore
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.deregistration import DeregistrationSweeper
from control_plane.xds.generate.snapshot import SnapshotGenerator, generate_snapshot
from control_plane.xds.lifecycle import STARTUP_GRACE_S, DataplaneLifecycle
from control_plane.xds.reconciler import DEFAULT_DEBOUNCE_S, Reconciler, mesh_of
from control_plane.xds.server import AdsServer, StreamRejected

# (the node, the stream's initial metadata) → None, or raise StreamRejected (e.g. UNAUTHENTICATED).
# It runs before the lifecycle registers the node's Dataplane: a refused stream changes nothing.
Authenticator = Callable[[base_pb2.Node, dict[str, str]], Awaitable[None]]
# (the node, the stream's initial metadata) → runs while the stream is open; raising
# StreamRejected ends it (e.g. its token was revoked: control_plane/dp_server/stream_reverify.py).
StreamWatcher = Callable[[base_pb2.Node, dict[str, str]], Awaitable[None]]

__all__ = ["Authenticator", "StreamRejected", "StreamWatcher", "XdsComponent"]


class XdsComponent:
    def __init__(
        self,
        store: ResourceStore,
        *,
        deregistration_delay_s: float = 10.0,
        authenticate: Authenticator | None = None,
        watch_stream: StreamWatcher | None = None,
        generator: SnapshotGenerator = generate_snapshot,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        startup_grace_s: float = STARTUP_GRACE_S,
        dns: DnsServerConfig | None = None,
        metrics: CpMetrics | None = None,
        limits: XdsServerLimits | None = None,
        instances: Instances | None = None,
        run_leader_jobs: bool = True,
    ) -> None:
        """`dns`: service names settings (the VIPs a VipAllocator keeps in the store become
        outbounds and DNS records); None leaves them out. `metrics`: where to count (the
        control plane's registry); None counts into a private one. `instances`: this instance
        and the others on the store (a new id if None). `run_leader_jobs`: run the deregistration
        sweeper here (one instance alone); False when a LeaderElection runs `self.deregistration`."""
        self._authenticate = authenticate
        self._watch_stream = watch_stream
        self.metrics = metrics or CpMetrics()
        self.cache = SnapshotCache()
        self.reconciler = Reconciler(
            store, self.cache, generator=generator, debounce_s=debounce_s, dns=dns, metrics=self.metrics
        )
        self.instances = instances or Instances(store, new_instance_id())
        self.lifecycle = DataplaneLifecycle(store, self.instances.instance_id)
        self.deregistration = DeregistrationSweeper(
            store, self.instances, deregistration_delay_s, max(startup_grace_s, deregistration_delay_s)
        )
        self._run_leader_jobs = run_leader_jobs
        self.ads = AdsServer(self.cache, hooks=self, metrics=self.metrics, limits=limits)

    def register(self, server: grpc.aio.Server) -> None:
        self.ads.register(server)

    async def run(self) -> None:
        """Run the reconciler and the lifecycle timers until cancelled; then end every ADS stream,
        so a `server.stop(grace)` that follows does not wait for streams that never end."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.reconciler.run(), name="xds-reconciler")
                if self._run_leader_jobs:
                    group.create_task(self.deregistration.run(), name="xds-deregistration")
        finally:
            self.lifecycle.stopping = True  # streams end now: their Dataplanes stay registered
            self.ads.close()

    def connected_nodes(self) -> list[str]:
        return self.reconciler.connected_nodes()

    # --- StreamHooks ---------------------------------------------------------------------------
    async def on_stream_open(self, node: base_pb2.Node, metadata: dict[str, str]) -> None:
        if self._authenticate is not None:
            await self._authenticate(node, metadata)
        await self.lifecycle.on_open(node)
        self.reconciler.track(node.id, json_format.MessageToDict(node.metadata))
        self.metrics.xds_dataplanes_connected.labels(mesh_of(node.id)).inc()

    def watch_stream(self, node: base_pb2.Node, metadata: dict[str, str]) -> Awaitable[None] | None:
        return None if self._watch_stream is None else self._watch_stream(node, metadata)

    async def on_stream_close(self, node: base_pb2.Node) -> None:
        self.metrics.xds_dataplanes_connected.labels(mesh_of(node.id)).dec()
        self.reconciler.untrack(node.id)
        await self.lifecycle.on_close(node.id)
