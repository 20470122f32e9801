"""Everything one proxy needs, from its Dataplane and the rest of its mesh: a pure function."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from google.protobuf.message import Message

from control_plane.resources.dataplane import Dataplane, Outbound
from control_plane.resources.mesh import Mesh
from control_plane.xds.generate.clusters import local_cluster, outbound_cluster
from control_plane.xds.generate.endpoints import EndpointIndex
from control_plane.xds.generate.listeners import inbound_listener, outbound_listener
from control_plane.xds.generate.protocol import tags_protocol
from control_plane.xds.generate.transparent import add_transparent_proxying, implied_outbounds, is_transparent
from control_plane.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE

# type URL → resource name → message
Resources = dict[str, dict[str, Message]]


class SnapshotGenerator(Protocol):
    def __call__(
        self,
        dataplane: Dataplane,
        mesh_dataplanes: Sequence[Dataplane],
        mesh: Mesh | None,
        *,
        endpoints: EndpointIndex | None = None,
    ) -> Resources: ...


def generate_snapshot(
    dataplane: Dataplane,
    mesh_dataplanes: Sequence[Dataplane],
    mesh: Mesh | None,
    *,
    endpoints: EndpointIndex | None = None,
) -> Resources:
    """Listeners, clusters and endpoints of `dataplane`.

    `endpoints` is the index of `mesh_dataplanes`; pass it when generating for many proxies of one
    mesh so the index (and each service's load assignment) is built once, not once per proxy.
    `mesh` is unused until mTLS and traffic policies arrive.
    """
    index = endpoints if endpoints is not None else EndpointIndex(mesh_dataplanes)
    resources: Resources = {CLUSTER_TYPE: {}, ENDPOINT_TYPE: {}, LISTENER_TYPE: {}, ROUTE_TYPE: {}}
    _add_inbounds(dataplane, resources)
    outbounds = dataplane.networking.outbound
    if is_transparent(dataplane):
        outbounds = implied_outbounds(dataplane, mesh_dataplanes, index)
    _add_outbounds(dataplane, outbounds, index, resources)
    add_transparent_proxying(dataplane, mesh, resources)
    return resources


def _add_inbounds(dataplane: Dataplane, resources: Resources) -> None:
    for inbound in dataplane.networking.inbound:
        protocol = tags_protocol(inbound.tags)
        listener = inbound_listener(dataplane, inbound, protocol)
        resources[LISTENER_TYPE][listener.name] = listener
        cluster = local_cluster(inbound, protocol)
        # Two inbounds sharing a servicePort share Kuma's `localhost:<port>` name: the first wins.
        resources[CLUSTER_TYPE].setdefault(cluster.name, cluster)


def _add_outbounds(
    dataplane: Dataplane, outbounds: Sequence[Outbound], index: EndpointIndex, resources: Resources
) -> None:
    for outbound in outbounds:
        service = outbound.service
        protocol = index.protocol(service)
        listener = outbound_listener(dataplane, outbound, protocol)
        resources[LISTENER_TYPE][listener.name] = listener
        if service not in resources[CLUSTER_TYPE]:
            resources[CLUSTER_TYPE][service] = outbound_cluster(service, protocol)
            resources[ENDPOINT_TYPE][service] = index.load_assignment(service)
