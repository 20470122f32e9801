"""Listeners: one per inbound (to the local application) and one per outbound (to a service).

Each listener has one filter chain: `http_connection_manager` with an inline route (no RDS) when the
protocol is HTTP, else `tcp_proxy`. A later mTLS step adds a `transport_socket` to these chains.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from control_plane.resources.dataplane import Dataplane, Inbound, Outbound
from control_plane.xds.generate.endpoints import socket_address
from control_plane.xds.generate.packing import pack
from control_plane.xds.generate.protocol import is_http
from control_plane.xds.generate.rbac import http_rbac_filter, network_rbac_filter
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


def inbound_listener(
    dataplane: Dataplane, inbound: Inbound, protocol: str, mtls: InboundMtls | None = None
) -> listener_pb2.Listener:
    address = dataplane.inbound_address(inbound)
    name = inbound_listener_name(address, inbound.port)
    cluster, route = local_cluster_name(inbound.workload_port), f"inbound:{inbound.service}"
    chain = filter_chain(name, cluster, protocol, route, mtls=mtls)
    if mtls is not None:
        secure_chain(chain, mtls)
    listener = listener_pb2.Listener(
        name=name,
        address=socket_address(address, inbound.port),
        traffic_direction=base_pb2.INBOUND,
        filter_chains=[chain],  # a copy: `chain` is complete by now
    )
    if mtls is not None and mtls.permissive:
        # Callers outside the mesh get the same chain in plaintext: no TLS, no RBAC, no identity.
        listener.listener_filters.extend(permissive_listener_filters())
        listener.filter_chains.append(filter_chain(name, cluster, protocol, route))
    return listener


def outbound_listener(dataplane: Dataplane, outbound: Outbound, protocol: str) -> listener_pb2.Listener:
    address = dataplane.outbound_address(outbound)
    name = outbound_listener_name(address, outbound.port)
    chain = filter_chain(name, outbound.service, protocol, f"outbound:{outbound.service}")
    return listener_pb2.Listener(
        name=name,
        address=socket_address(address, outbound.port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[chain],
    )


def filter_chain(
    listener_name: str, cluster: str, protocol: str, route_name: str, mtls: InboundMtls | None = None
) -> listener_components_pb2.FilterChain:
    """`mtls` (inbound mTLS chains only): forward the caller's identity, enforce its permissions."""
    stats = stat_prefix(listener_name)
    permissions = mtls.permissions if mtls is not None else None
    filters: list[listener_components_pb2.Filter] = []
    if is_http(protocol):
        manager = _http_connection_manager(stats, cluster, route_name)
        if mtls is not None:
            _forward_client_identity(manager)
        if mtls is not None and permissions is not None:
            manager.http_filters.insert(0, http_rbac_filter(permissions, mtls.mesh))
        filters.append(_filter(HCM_FILTER, manager))
    else:
        if mtls is not None and permissions is not None:
            filters.append(network_rbac_filter(permissions, mtls.mesh, stats))
        filters.append(_filter(TCP_PROXY_FILTER, tcp_proxy_pb2.TcpProxy(stat_prefix=stats, cluster=cluster)))
    return listener_components_pb2.FilterChain(filters=filters)


def _forward_client_identity(manager: hcm.HttpConnectionManager) -> None:
    """The app gets `x-forwarded-client-cert: ...;URI=spiffe://<mesh>/<caller>`; whatever the
    caller sent in that header is replaced, so it cannot be forged."""
    manager.forward_client_cert_details = hcm.HttpConnectionManager.SANITIZE_SET
    manager.set_current_client_cert_details.uri = True


def _http_connection_manager(stats: str, cluster: str, route_name: str) -> hcm.HttpConnectionManager:
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        # No overall deadline (long polls, streams); Envoy's idle timeouts still apply.
        route=route_components_pb2.RouteAction(cluster=cluster, timeout=duration_pb2.Duration(seconds=0)),
    )
    virtual_host = route_components_pb2.VirtualHost(name=cluster, domains=["*"], routes=[route])
    router = hcm.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))
    return hcm.HttpConnectionManager(
        stat_prefix=stats,
        codec_type=hcm.HttpConnectionManager.AUTO,
        route_config=route_pb2.RouteConfiguration(name=route_name, virtual_hosts=[virtual_host]),
        http_filters=[router],
    )


def _filter(name: str, config: Message) -> listener_components_pb2.Filter:
    return listener_components_pb2.Filter(name=name, typed_config=pack(config))
