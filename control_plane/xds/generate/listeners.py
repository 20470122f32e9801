"""Listeners: one per inbound (to the local application) and one per outbound (to a service).

A chain is built in two steps: `chain_parts` makes its unpacked pieces (`http_connection_manager`
with an inline route, no RDS, when the protocol is HTTP, else `tcp_proxy`), the policy plugins edit
them, and `assemble_chain` packs them into the FilterChain a listener carries.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import wrappers_pb2

from control_plane.policies.core.parts import ChainParts, InboundParts
from control_plane.resources.dataplane import Dataplane, Inbound, Outbound
from control_plane.xds.generate.endpoints import socket_address
from control_plane.xds.generate.pack import network_filter, pack
from control_plane.xds.generate.protocol import is_http
from control_plane.xds.generate.tls import InboundMtls, permissive_listener_filters, secure_chain
from control_plane.xds.names import (
    inbound_listener_name,
    local_cluster_name,
    outbound_listener_name,
    stat_prefix,
)

TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
# Kuma's timeouts when no MeshTimeout says otherwise: an outbound request may take 15 s; inbound
# routes have no deadline (the caller's outbound one applies; long polls and streams work).
OUTBOUND_ROUTE_TIMEOUT_S = 15
INBOUND_ROUTE_TIMEOUT_S = 0


def inbound_parts(
    dataplane: Dataplane,
    inbound: Inbound,
    protocol: str,
    mtls: InboundMtls | None,
    cluster: cluster_pb2.Cluster | None,
) -> InboundParts:
    """With mTLS: the chain for mesh peers (their identity forwarded to the app) and a plaintext one
    for callers outside the mesh (no TLS, no identity), served only in PERMISSIVE."""
    name = inbound_listener_name(dataplane.inbound_address(inbound), inbound.port)
    target, route = local_cluster_name(inbound.workload_port), f"inbound:{inbound.service}"

    def chain(secure: bool) -> ChainParts:
        parts = chain_parts(name, target, protocol, route, INBOUND_ROUTE_TIMEOUT_S)
        parts.secure = secure
        if secure and parts.hcm is not None:
            _forward_client_identity(parts.hcm)
        return parts

    chains = [chain(secure=True), chain(secure=False)] if mtls is not None else [chain(secure=False)]
    permissive = mtls is not None and mtls.permissive
    return InboundParts(
        dataplane, inbound, protocol, chains, cluster, mtls=mtls is not None, permissive=permissive
    )


def inbound_listener(parts: InboundParts, mtls: InboundMtls | None) -> listener_pb2.Listener:
    address = parts.dataplane.inbound_address(parts.inbound)
    listener = listener_pb2.Listener(
        name=inbound_listener_name(address, parts.inbound.port),
        address=socket_address(address, parts.inbound.port),
        traffic_direction=base_pb2.INBOUND,
    )
    for chain in parts.chains:
        if mtls is not None and not chain.secure and not parts.permissive:
            continue  # STRICT: nothing but mesh mTLS reaches the inbound
        assembled = listener.filter_chains.add()
        assembled.CopyFrom(assemble_chain(chain))
        if chain.secure and mtls is not None:
            secure_chain(assembled, mtls, parts.permissive, parts.tls_parameters)
    if mtls is not None and parts.permissive:
        listener.listener_filters.extend(permissive_listener_filters())
    return listener


def outbound_listener(
    dataplane: Dataplane, outbound: Outbound, chain: listener_components_pb2.FilterChain
) -> listener_pb2.Listener:
    address = dataplane.outbound_address(outbound)
    return listener_pb2.Listener(
        name=outbound_listener_name(address, outbound.port),
        address=socket_address(address, outbound.port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[chain],
    )


def outbound_chain_parts(listener_name: str, service: str, protocol: str) -> ChainParts:
    return chain_parts(listener_name, service, protocol, f"outbound:{service}", OUTBOUND_ROUTE_TIMEOUT_S)


def chain_parts(
    listener_name: str, cluster: str, protocol: str, route_name: str, route_timeout_s: int
) -> ChainParts:
    stats = stat_prefix(listener_name)
    if is_http(protocol):
        return ChainParts(stats, hcm=_http_connection_manager(stats, cluster, route_name, route_timeout_s))
    return ChainParts(stats, tcp_proxy=tcp_proxy_pb2.TcpProxy(stat_prefix=stats, cluster=cluster))


def assemble_chain(parts: ChainParts, name: str = "") -> listener_components_pb2.FilterChain:
    filters = list(parts.network_filters)
    if parts.hcm is not None:
        filters.append(network_filter(HCM_FILTER, parts.hcm))
    if parts.tcp_proxy is not None:
        filters.append(network_filter(TCP_PROXY_FILTER, parts.tcp_proxy))
    return listener_components_pb2.FilterChain(name=name, filters=filters)


def _forward_client_identity(manager: hcm.HttpConnectionManager) -> None:
    """The app gets `x-forwarded-client-cert: ...;URI=spiffe://<mesh>/<caller>`; whatever the
    caller sent in that header is replaced, so it cannot be forged."""
    manager.forward_client_cert_details = hcm.HttpConnectionManager.SANITIZE_SET
    manager.set_current_client_cert_details.uri = True


def _http_connection_manager(
    stats: str, cluster: str, route_name: str, timeout_s: int
) -> hcm.HttpConnectionManager:
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(cluster=cluster),
    )
    route.route.timeout.seconds = timeout_s
    virtual_host = route_components_pb2.VirtualHost(name=cluster, domains=["*"], routes=[route])
    router = hcm.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))
    return hcm.HttpConnectionManager(
        stat_prefix=stats,
        codec_type=hcm.HttpConnectionManager.AUTO,
        # As Kuma: a route naming a cluster the proxy lacks answers 503 instead of Envoy refusing
        # the whole listener update (inline route tables validate their clusters by default).
        route_config=route_pb2.RouteConfiguration(
            name=route_name,
            virtual_hosts=[virtual_host],
            validate_clusters=wrappers_pb2.BoolValue(value=False),
        ),
        http_filters=[router],
    )
