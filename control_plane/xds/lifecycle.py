"""Kuma's universal Dataplane lifecycle, driven by ADS streams: the part of each instance.

A proxy started with a Dataplane (`kuma-dp run -d dp.yaml`) sends it in its node metadata as
`dataplane.resource`: it is validated and upserted when the stream opens, together with its
registration record (owned by the Dataplane, so both go together) saying which control-plane
instance the proxy is connected to. When the node's last stream on this instance closes, the record
says "disconnected since now"; the leader's sweeper (control_plane/xds/deregistration.py) removes
the Dataplane `deregistration_delay_s` later unless the proxy reconnected, to this instance or
another. A Dataplane applied with kumactl (no `dataplane.resource`) is never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
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
from control_plane.store.base import (
    ConflictError,
    MissingError,
    ResourceStore,
    Write,
    dataplane_key,
    mesh_key,
)
from control_plane.xds.binding import BindingConflict, check_binding, registration_key
from control_plane.xds.deregistration import connection_spec
from control_plane.xds.names import InvalidNodeId, parse_node_id
from control_plane.xds.server import StreamRejected
from kuma_common.dp_contract import RESOURCE_METADATA_KEY

log = logging.getLogger(__name__)

# After a restart, proxies reconnect with Envoy's backoff (up to 30 s): wait at least this long
# before removing a Dataplane whose proxy has not come back.
STARTUP_GRACE_S = 60.0
_HEADER_FIELDS = ("type", "mesh", "name", *READ_ONLY_FIELDS)


class DataplaneLifecycle:
    def __init__(self, store: ResourceStore, instance_id: str) -> None:
        self._store = store
        self._instance_id = instance_id
        self._streams: Counter[str] = Counter()
        self._registered: set[str] = set()  # node ids whose Dataplane came from their metadata
        self.stopping = False  # the control plane is stopping: streams end, records stay "connected"

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
            await asyncio.to_thread(self._register, dataplane)
            self._registered.add(node.id)
        self._streams[node.id] += 1

    async def on_close(self, node_id: str) -> None:
        self._streams[node_id] -= 1
        if self._streams[node_id] > 0:
            return
        del self._streams[node_id]
        if node_id in self._registered and not self.stopping:
            self._registered.discard(node_id)
            try:
                await asyncio.to_thread(self._mark_disconnected, node_id)
            except Exception as exc:  # the record stays "connected" here: the leader's grace applies
                log.warning("could not record that %s disconnected: %s", node_id, exc)

    def _register(self, dataplane: Dataplane) -> None:
        """The record (every stream open: it names this instance) and, when new or changed, the
        Dataplane, in one transaction. An unchanged Dataplane is not rewritten: that would wake
        the mesh's xDS rebuild for every proxy connecting."""
        if self._store.get(mesh_key(dataplane.mesh)) is None:
            raise _mesh_missing(dataplane.mesh)
        try:
            check_binding(self._store, dataplane)  # an admin's Dataplane keeps its services
        except BindingConflict as exc:
            raise StreamRejected(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
        key = dataplane_key(dataplane.name, dataplane.mesh)
        spec = {k: v for k, v in to_document(dataplane).items() if k not in _HEADER_FIELDS}
        previous = self._store.get(key)
        record = Write(
            registration_key(dataplane.mesh, dataplane.name),
            connection_spec(self._instance_id, True, time.time()),
            owner=key,
        )
        changed = previous is None or previous.spec != spec
        try:
            self._store.upsert_all([Write(key, spec), record] if changed else [record])
        except MissingError:  # the Mesh (or the Dataplane) went away meanwhile: write both
            if changed:
                raise _mesh_missing(dataplane.mesh) from None
            try:
                self._store.upsert_all([Write(key, spec), record])
            except MissingError:
                raise _mesh_missing(dataplane.mesh) from None
        if changed:
            log.info("Dataplane %s/%s registered by its proxy", dataplane.mesh, dataplane.name)

    def _mark_disconnected(self, node_id: str) -> None:
        """Unless the proxy is on another instance by now (the record names that one)."""
        mesh, name = parse_node_id(node_id)
        key = registration_key(mesh, name)
        record = self._store.get(key)
        if record is None or record.spec.get("instance") != self._instance_id:
            return
        spec = connection_spec(self._instance_id, False, time.time())
        # ConflictError: reconnected meanwhile; MissingError: deregistered meanwhile.
        with contextlib.suppress(ConflictError, MissingError):
            self._store.upsert_all([Write(key, spec, expected_version=record.version, owner=record.owner)])


def _mesh_missing(mesh: str) -> StreamRejected:
    return StreamRejected(
        grpc.StatusCode.FAILED_PRECONDITION, f"mesh {mesh!r} of the Dataplane does not exist"
    )


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
