"""`cluster` and `listener` modifications: whole resources added, removed or patched."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from control_plane.policies.meshproxypatch.api import ADD, REMOVE, ClusterMod, ListenerMod
from control_plane.policies.meshproxypatch.envoy_json import parsed_value
from control_plane.policies.meshproxypatch.origins import cluster_origin, listener_origin
from control_plane.policies.meshproxypatch.patching import patched
from control_plane.policies.meshproxypatch.staged import Staged
from control_plane.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE


def modify_clusters(mod: ClusterMod, staged: Staged) -> None:
    def origin(name: str) -> str | None:
        served = staged.get(ENDPOINT_TYPE, name) is not None
        return staged.added_origin(CLUSTER_TYPE, name) or cluster_origin(name, served)

    _modify(CLUSTER_TYPE, cluster_pb2.Cluster, mod, staged, origin)


def modify_listeners(mod: ListenerMod, staged: Staged) -> None:
    def origin(name: str) -> str | None:
        return staged.added_origin(LISTENER_TYPE, name) or listener_origin(name)

    _modify(LISTENER_TYPE, listener_pb2.Listener, mod, staged, origin)


def _modify(type_url: str, message_type: type, mod: ClusterMod | ListenerMod, staged: Staged, origin) -> None:
    if mod.operation == ADD:
        assert mod.value is not None  # the model checked
        added = parsed_value(mod.value, message_type)
        staged.add(type_url, added.name, added)  # as Kuma: one of that name is replaced
        return
    match = mod.match
    for name in staged.names(type_url):
        if match is not None and (
            (match.name is not None and match.name != name)
            or (match.origin is not None and match.origin != origin(name))
        ):
            continue
        if mod.operation == REMOVE:
            staged.remove(type_url, name)
            continue
        current = staged.get(type_url, name)
        assert current is not None
        changed = patched(current, mod.value, mod.jsonPatches)
        if changed != current:
            staged.put(type_url, name, changed)
