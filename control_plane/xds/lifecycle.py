"""Kuma's universal Dataplane lifecycle, driven by ADS streams.

A proxy started with a Dataplane (`kuma-dp run -d dp.yaml`) sends it in its node metadata as
`dataplane.resource`: it is validated and upserted when the stream opens, and deleted
`deregistration_delay_s` after the node's last stream closes, unless the node reconnects first.
A Dataplane applied with kumactl (no `dataplane.resource`) is never deleted here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2

from control_plane.resources.dataplane import Dataplane
from control_plane.resources.registry import (
    DATAPLANE,
    READ_ONLY_FIELDS,
    InvalidResource,
    parse_resource,
    to_document,
)
from control_plane.store.base import ResourceKey, ResourceStore, dataplane_key, mesh_key
from control_plane.xds.binding import REGISTRATION_TYPE, BindingConflict, check_binding
from control_plane.xds.names import InvalidNodeId, parse_node_id
from control_plane.xds.names import node_id as node_id_of
from control_plane.xds.server import StreamRejected
from kuma_common.dp_contract import RESOURCE_METADATA_KEY

log = logging.getLogger(__name__)

# After a restart, proxies reconnect with Envoy's backoff (up to 30 s): wait at least this long
# before removing a Dataplane whose proxy has not come back.
STARTUP_GRACE_S = 60.0
_HEADER_FIELDS = ("type", "mesh", "name", *READ_ONLY_FIELDS)
# A deregistration the store refused (disk full, database locked) is tried again, backing off.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


class DataplaneLifecycle:
    def __init__(
        self, store: ResourceStore, deregistration_delay_s: float, startup_grace_s: float = STARTUP_GRACE_S
    ) -> None:
        self._store = store
        self._delay_s = deregistration_delay_s
        self._startup_grace_s = max(startup_grace_s, deregistration_delay_s)
        self._streams: Counter[str] = Counter()
        self._registered: set[str] = set()  # node ids whose Dataplane came from their metadata
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._stopped = False  # the control plane is stopping: streams end, Dataplanes stay

    async def on_open(self, node: base_pb2.Node) -> None:
        """Register the node's Dataplane if it sent one; raises StreamRejected if it is not valid."""
        mesh, name = _node_id(node.id)
        dataplane = metadata_dataplane(node)
        if dataplane is not None:
            if (dataplane.mesh, dataplane.name) != (mesh, name):
                raise StreamRejected(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{RESOURCE_METADATA_KEY}: mesh {dataplane.mesh!r} and name {dataplane.name!r} "
                    f"do not match the node id {node.id!r} (<mesh>.<name>)",
                )
            await asyncio.to_thread(self._upsert, dataplane)
            self._registered.add(node.id)
        self._cancel_pending(node.id)
        self._streams[node.id] += 1

    def on_close(self, node_id: str) -> None:
        self._streams[node_id] -= 1
        if self._streams[node_id] > 0:
            return
        del self._streams[node_id]
        if node_id in self._registered and not self._stopped:
            self._schedule_deregistration(node_id, self._delay_s)

    def _schedule_deregistration(self, node_id: str, delay_s: float) -> None:
        self._cancel_pending(node_id)
        self._pending[node_id] = asyncio.create_task(self._deregister_later(node_id, delay_s))

    async def run(self) -> None:
        """Owns the deregistration timers: cancelled with it (the Dataplanes then stay, and the
        next start removes those whose proxy does not come back)."""
        try:
            await self._sweep_after_restart()
            await asyncio.Event().wait()
        finally:
            self._stopped = True
            pending = list(self._pending.values())
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _sweep_after_restart(self) -> None:
        """Dataplanes registered by proxies before this start: removed unless their proxy returns."""
        records, _ = await asyncio.to_thread(self._store.list, REGISTRATION_TYPE)
        for record in records:
            node_id = node_id_of(record.key.mesh, record.key.name)
            if self._streams[node_id] == 0 and node_id not in self._pending:
                self._registered.add(node_id)
                self._schedule_deregistration(node_id, self._startup_grace_s)
        if records:
            log.info(
                "%d Dataplane(s) registered by proxies before this start; those whose proxy does not "
                "reconnect within %gs are removed",
                len(records),
                self._startup_grace_s,
            )

    async def _deregister_later(self, node_id: str, delay_s: float) -> None:
        """The timer: waits, then deregisters; a failure is logged and retried until it works
        (or the node reconnects, or the control plane stops: both cancel this task)."""
        await asyncio.sleep(delay_s)
        retry_s = RETRY_FIRST_S
        while self._streams[node_id] == 0:
            try:
                await self._deregister(node_id)
                break
            except Exception as exc:  # the store failing: the Dataplane must still go, later
                log.warning("could not deregister %s (trying again in %gs): %s", node_id, retry_s, exc)
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, RETRY_MAX_S)
        if self._pending.get(node_id) is asyncio.current_task():
            del self._pending[node_id]

    async def _deregister(self, node_id: str) -> None:
        mesh, name = parse_node_id(node_id)
        deleted = await asyncio.to_thread(self._store.delete, dataplane_key(name, mesh))
        await asyncio.to_thread(self._store.delete, ResourceKey(REGISTRATION_TYPE, mesh, name))
        self._registered.discard(node_id)
        if deleted:
            log.info("Dataplane %s/%s deregistered: its proxy disconnected", mesh, name)

    def _cancel_pending(self, node_id: str) -> None:
        task = self._pending.pop(node_id, None)
        if task is not None:
            task.cancel()

    def _upsert(self, dataplane: Dataplane) -> None:
        if self._store.get(mesh_key(dataplane.mesh)) is None:
            raise StreamRejected(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"mesh {dataplane.mesh!r} of the Dataplane does not exist",
            )
        try:
            check_binding(self._store, dataplane)  # an admin's Dataplane keeps its services
        except BindingConflict as exc:
            raise StreamRejected(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
        key = dataplane_key(dataplane.name, dataplane.mesh)
        marker = ResourceKey(REGISTRATION_TYPE, dataplane.mesh, dataplane.name)
        if self._store.get(marker) is None:  # first, so a crash in between cannot leak a Dataplane
            self._store.upsert(marker, {})
        spec = {k: v for k, v in to_document(dataplane).items() if k not in _HEADER_FIELDS}
        stored = self._store.get(key)
        if stored is None or stored.spec != spec:  # an unchanged upsert would still wake the mesh
            self._store.upsert(key, spec)
            log.info("Dataplane %s/%s registered by its proxy", dataplane.mesh, dataplane.name)


def _node_id(value: str) -> tuple[str, str]:
    try:
        return parse_node_id(value)
    except InvalidNodeId as exc:
        raise StreamRejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


def metadata_dataplane(node: base_pb2.Node) -> Dataplane | None:
    """The Dataplane the proxy sent in its node metadata, if any; StreamRejected if it is invalid."""
    value = node.metadata.fields.get(RESOURCE_METADATA_KEY)
    if value is None:
        return None
    if value.WhichOneof("kind") != "string_value":
        raise _invalid("must be the Dataplane as a JSON string")
    try:
        doc: Any = json.loads(value.string_value)
    except json.JSONDecodeError as exc:
        raise _invalid(f"is not valid JSON: {exc}") from None
    try:
        model = parse_resource(doc, DATAPLANE)
    except InvalidResource as exc:
        raise _invalid("; ".join(f"{c['field']}: {c['message']}" for c in exc.causes)) from None
    assert isinstance(model, Dataplane)
    return model


def _invalid(message: str) -> StreamRejected:
    return StreamRejected(grpc.StatusCode.INVALID_ARGUMENT, f"invalid {RESOURCE_METADATA_KEY}: {message}")
