"""Endpoints of every service in a mesh, indexed once per mesh and shared by all its proxies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import struct_pb2

from control_plane.dns.records import MeshNames
from control_plane.resources.dataplane import Dataplane, Inbound
from control_plane.xds.generate.protocol import common_protocol, tags_protocol

# Envoy's filter-metadata namespace read by subset load balancing (Kuma puts endpoint tags there).
LB_METADATA = "envoy.lb"


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    tags: Mapping[str, str]
    dataplane: str  # the owning Dataplane's name, to keep the order stable


def endpoint_of(dataplane: Dataplane, inbound: Inbound) -> Endpoint:
    net = dataplane.networking
    address = inbound.address or net.advertisedAddress or net.address
    return Endpoint(address, inbound.port, dict(inbound.tags), dataplane.name)


class EndpointIndex:
    """service → endpoints over all Dataplanes of a mesh; load assignments are built once each.
    `names`: the mesh's service names (virtual IPs and DNS records), None when they are off."""

    def __init__(self, dataplanes: Iterable[Dataplane], names: MeshNames | None = None) -> None:
        self.names = names
        by_service: dict[str, list[Endpoint]] = {}
        for dataplane in dataplanes:
            for inbound in dataplane.networking.inbound:
                by_service.setdefault(inbound.service, []).append(endpoint_of(dataplane, inbound))
        for endpoints in by_service.values():
            endpoints.sort(key=lambda e: (e.address, e.port, e.dataplane))
        self._by_service = by_service
        self._assignments: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
        self._protocols: dict[str, str] = {}

    def services(self) -> list[str]:
        """Every service with an endpoint in the mesh, sorted."""
        return sorted(self._by_service)

    def endpoints(self, service: str) -> list[Endpoint]:
        return self._by_service.get(service, [])

    def protocol(self, service: str) -> str:
        # Asked once per outbound of every proxy: computed once per service.
        found = self._protocols.get(service)
        if found is None:
            found = self._protocols[service] = common_protocol(
                tags_protocol(e.tags) for e in self.endpoints(service)
            )
        return found

    def load_assignment(self, service: str) -> endpoint_pb2.ClusterLoadAssignment:
        """The same message object for every caller, so the cache serializes it only once."""
        if service not in self._assignments:
            self._assignments[service] = load_assignment(service, self.endpoints(service))
        return self._assignments[service]


def load_assignment(cluster: str, endpoints: Iterable[Endpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    lb_endpoints = [_lb_endpoint(e.address, e.port, e.tags) for e in endpoints]
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster)
    if lb_endpoints:
        cla.endpoints.append(endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints))
    return cla


def _lb_endpoint(
    address: str, port: int, tags: Mapping[str, str] | None = None
) -> endpoint_components_pb2.LbEndpoint:
    lb_endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=socket_address(address, port))
    )
    if tags:
        metadata = struct_pb2.Struct()
        metadata.update(dict(sorted(tags.items())))
        lb_endpoint.metadata.CopyFrom(base_pb2.Metadata(filter_metadata={LB_METADATA: metadata}))
    return lb_endpoint


def static_load_assignment(cluster: str, address: str, port: int) -> endpoint_pb2.ClusterLoadAssignment:
    """One endpoint without metadata: the application behind an inbound."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster,
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[_lb_endpoint(address, port)])],
    )


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))
