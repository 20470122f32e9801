"""Transparent proxying: the listeners that catch what iptables redirects to 15001 / 15006.

Kuma's shape, names included:
- `outbound:passthrough:ipv4` on 0.0.0.0:<redirectPortOutbound> with `use_original_dst`: Envoy hands
  each redirected connection to the listener whose address is the connection's original
  destination; what matches none is sent on to that destination through the ORIGINAL_DST cluster
  of the same name (Kuma's mesh passthrough, on unless `Mesh.networking.outbound.passthrough` is
  false, in which case the connection is closed).
- `inbound:passthrough:ipv4` on 0.0.0.0:<redirectPortInbound> with `use_original_dst`: a connection
  for a declared inbound is handed to that inbound's listener; any other port goes on to the
  original destination from 127.0.0.6 (so iptables lets it through to the app), unless the mesh's
  mTLS is STRICT, where it is closed: in STRICT nothing reaches the workload around the mesh.
- Every other listener of the proxy binds nothing (`bind_to_port: false`); the app owns its port.

Known services are reached through one `outbound:<ip>:<port>` listener per endpoint of the mesh
(`bind_to_port: false`), not through filter chains of the 15001 listener matched on destination
IP/port. Why: it is Kuma's way and names; the implied outbounds go through exactly the code
explicit outbounds use (protocol, routes, and the mTLS of the service's cluster), so the two modes
cannot drift; and an endpoint coming or going adds or removes one small listener instead of
rewriting (and draining chains of) the one listener every outbound connection of the proxy
crosses. As with Kuma's VIPs, a call to one endpoint's address reaches its *service*: the
service's cluster balances it over all endpoints, over mTLS when the mesh has it on.
"""

from __future__ import annotations

import ipaddress
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.direct_response.v3 import config_pb2 as direct_response_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from control_plane.resources.common import SERVICE_TAG
from control_plane.resources.dataplane import Dataplane, Outbound, TransparentProxying
from control_plane.resources.mesh import Mesh
from control_plane.xds.generate.clusters import CONNECT_TIMEOUT_S, outbound_cluster
from control_plane.xds.generate.endpoints import EndpointIndex, socket_address
from control_plane.xds.generate.listeners import TCP_PROXY_FILTER, outbound_listener
from control_plane.xds.names import CLUSTER_TYPE, LISTENER_TYPE, local_cluster_name, stat_prefix

DIRECT_RESPONSE_FILTER = "envoy.filters.network.direct_response"


@dataclass(frozen=True)
class IpFamily:
    name: str  # the suffix of Kuma's passthrough names
    any_address: str
    inbound_source: str  # where redirected inbound traffic leaves from: iptables lets it reach the app


IPV4 = IpFamily("ipv4", "0.0.0.0", "127.0.0.6")
IPV6 = IpFamily("ipv6", "::", "::6")


def outbound_passthrough_name(family: IpFamily) -> str:
    return f"outbound:passthrough:{family.name}"


def inbound_passthrough_name(family: IpFamily) -> str:
    return f"inbound:passthrough:{family.name}"


def is_transparent(dataplane: Dataplane) -> bool:
    return dataplane.networking.transparentProxying is not None


def ip_families(dataplane: Dataplane) -> tuple[IpFamily, ...]:
    """IPv4 always but in `ipFamilyMode: ipv6`; IPv6 too for an IPv6 address or dual stack."""
    tp = dataplane.networking.transparentProxying or TransparentProxying()
    if tp.ipFamilyMode == "ipv6":
        return (IPV6,)
    if tp.ipFamilyMode == "dualstack" or _is_ipv6(dataplane.networking.address):
        return (IPV4, IPV6)
    return (IPV4,)


class ImpliedOutbounds:
    """The outbounds transparent proxying implies in one mesh: one per endpoint (address, port) of
    every service, in service order (two services on one address: the first wins).

    Their listeners depend on the mesh only, so each is built once and the same message is given to
    every proxy of the mesh: the Packer then serializes it once, not once per proxy (without this,
    a mesh of N transparent proxies costs N x N listener builds). Should per-caller policies ever
    shape outbound listeners, they must become part of the key.
    """

    _by_index: weakref.WeakKeyDictionary[EndpointIndex, ImpliedOutbounds] = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, mesh_dataplanes: Iterable[Dataplane], index: EndpointIndex) -> None:
        services = sorted({i.service for other in mesh_dataplanes for i in other.networking.inbound})
        by_address: dict[tuple[str, int], Outbound] = {}
        for service in services:
            for endpoint in index.endpoints(service):
                # Built from already validated Dataplanes: skip validating them once more.
                outbound = Outbound.model_construct(
                    port=endpoint.port, address=endpoint.address, tags={SERVICE_TAG: service}
                )
                by_address.setdefault((endpoint.address, endpoint.port), outbound)
        self.outbounds = list(by_address.values())
        self._listeners: dict[tuple[str, int], listener_pb2.Listener] = {}
        self._index = index
        self._every: MeshOutbounds | None = None

    @classmethod
    def of(cls, mesh_dataplanes: Iterable[Dataplane], index: EndpointIndex) -> ImpliedOutbounds:
        """The shared set of the mesh whose endpoints `index` holds (built on first use)."""
        with cls._lock:
            implied = cls._by_index.get(index)
            if implied is None:
                implied = cls._by_index[index] = cls(mesh_dataplanes, index)
            return implied

    def for_proxy(self, dataplane: Dataplane) -> list[Outbound]:
        """What `dataplane` may reach: `reachableServices` narrows the set, as in Kuma; its own
        inbounds are left out (their `inbound:` listener owns that address already, and a call to
        it lands there through 15001)."""
        tp = dataplane.networking.transparentProxying or TransparentProxying()
        reachable = set(tp.reachableServices) if tp.reachableServices is not None else None
        own = {(dataplane.inbound_address(i), i.port) for i in dataplane.networking.inbound}
        return [
            o
            for o in self.outbounds
            if (o.address, o.port) not in own and (reachable is None or o.service in reachable)
        ]

    def every(self, dataplane: Dataplane) -> MeshOutbounds:
        """Every implied outbound's listener, cluster and load assignment, built once per mesh."""
        with self._lock:
            every = self._every
        if every is None:
            every = MeshOutbounds.build(dataplane, self, self._index)
            with self._lock:
                self._every = self._every or every
        return self._every

    def listener(self, dataplane: Dataplane, outbound: Outbound, protocol: str) -> listener_pb2.Listener:
        """`outbound_listener`'s result for `outbound`, binding nothing, built once per mesh."""
        key = (outbound.address or "", outbound.port)
        with self._lock:
            listener = self._listeners.get(key)
            if listener is None:
                listener = self._listeners[key] = outbound_listener(dataplane, outbound, protocol)
                listener.bind_to_port.value = False
            return listener


@dataclass(frozen=True)
class MeshOutbounds:
    """The outbound part every transparent proxy of a mesh shares, as ready resource dicts: a proxy
    takes a copy (one C-level dict copy, not a loop over every endpoint of the mesh) and drops
    only what its own inbounds shadow. Clusters are shared only without mTLS (with it they name
    the proxy's own certificate files)."""

    listeners: dict[str, listener_pb2.Listener]  # name → listener
    clusters: dict[str, cluster_pb2.Cluster]  # service → plain-text EDS cluster
    load_assignments: dict[str, Message]  # service → its ClusterLoadAssignment
    protocols: dict[str, str]  # service → protocol
    by_key: dict[tuple[str, int], tuple[str, str]]  # (address, port) → (listener name, service)
    outbounds_of: dict[str, int]  # service → how many outbound listeners lead to it

    @classmethod
    def build(cls, dataplane: Dataplane, implied: ImpliedOutbounds, index: EndpointIndex) -> MeshOutbounds:
        listeners, by_key, outbounds_of, protocols = {}, {}, {}, {}
        for outbound in implied.outbounds:
            service = outbound.service
            protocol = protocols.setdefault(service, index.protocol(service))
            listener = implied.listener(dataplane, outbound, protocol)
            listeners[listener.name] = listener
            by_key[(outbound.address or "", outbound.port)] = (listener.name, service)
            outbounds_of[service] = outbounds_of.get(service, 0) + 1
        clusters = {s: outbound_cluster(s, p) for s, p in sorted(protocols.items())}
        assignments: dict[str, Message] = {s: index.load_assignment(s) for s in sorted(protocols)}
        # In name order: the cache sorts every proxy's copy, and sorted input sorts fastest.
        listeners = dict(sorted(listeners.items()))
        return cls(listeners, clusters, assignments, protocols, by_key, outbounds_of)

    def services_without(self, keys: Iterable[tuple[str, int]]) -> tuple[list[str], list[str]]:
        """(listener names, services) a proxy loses when `keys` (its own inbounds) are left out."""
        names, lost = [], dict[str, int]()
        for key in keys:
            hit = self.by_key.get(key)
            if hit is not None:
                names.append(hit[0])
                lost[hit[1]] = lost.get(hit[1], 0) + 1
        return names, [s for s, n in lost.items() if n == self.outbounds_of[s]]


def add_transparent_proxying(
    dataplane: Dataplane, mesh: Mesh | None, resources: dict[str, dict[str, Message]]
) -> None:
    """Turn the proxy's inbound/outbound config (already in `resources`) into its transparent form."""
    tp = dataplane.networking.transparentProxying
    if tp is None:
        return
    listeners, clusters = resources[LISTENER_TYPE], resources[CLUSTER_TYPE]
    for listener in listeners.values():  # the redirect listeners below are the only ones bound
        if not listener.HasField("bind_to_port"):  # (shared outbound listeners already say so)
            listener.bind_to_port.value = False
    for inbound in dataplane.networking.inbound:
        local = clusters.get(local_cluster_name(inbound.workload_port))
        if isinstance(local, cluster_pb2.Cluster):
            _bind_upstream_source(local, inbound.serviceAddress or "127.0.0.1")
    for family in ip_families(dataplane):
        outbound = _passthrough_listener(
            outbound_passthrough_name(family), family, tp.redirectPortOutbound, base_pb2.OUTBOUND
        )
        _set_default_chain(outbound, outbound_passthrough_name(family), mesh_passthrough(mesh))
        inbound = _passthrough_listener(
            inbound_passthrough_name(family), family, tp.redirectPortInbound, base_pb2.INBOUND
        )
        _set_default_chain(inbound, inbound_passthrough_name(family), not strict_mtls(mesh))
        for listener in (outbound, inbound):
            listeners[listener.name] = listener
        clusters[outbound_passthrough_name(family)] = original_destination_cluster(
            outbound_passthrough_name(family)
        )
        clusters[inbound_passthrough_name(family)] = original_destination_cluster(
            inbound_passthrough_name(family), source=family.inbound_source
        )


def mesh_passthrough(mesh: Mesh | None) -> bool:
    """Kuma's `Mesh.networking.outbound.passthrough`, on unless set to false."""
    outbound = mesh.networking.outbound if mesh and mesh.networking else None
    return bool((outbound or {}).get("passthrough", True))


def strict_mtls(mesh: Mesh | None) -> bool:
    backend = mesh.mtls.enabled if mesh and mesh.mtls else None
    return backend is not None and backend.mode == "STRICT"


def original_destination_cluster(name: str, source: str | None = None) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration_pb2.Duration(seconds=CONNECT_TIMEOUT_S),
    )
    if source is not None:
        _bind_source(cluster, source)
    return cluster


def _passthrough_listener(
    name: str, family: IpFamily, port: int, direction: base_pb2.TrafficDirection
) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(
        name=name, address=socket_address(family.any_address, port), traffic_direction=direction
    )
    listener.use_original_dst.value = True
    return listener


def _set_default_chain(listener: listener_pb2.Listener, cluster: str, passthrough: bool) -> None:
    stats = stat_prefix(listener.name)
    if passthrough:
        config: Message = tcp_proxy_pb2.TcpProxy(stat_prefix=stats, cluster=cluster)
        name = TCP_PROXY_FILTER
    else:
        # Envoy refuses a listener without filter chains; an empty direct response closes at once.
        config, name = direct_response_pb2.Config(), DIRECT_RESPONSE_FILTER
    packed = any_pb2.Any()
    packed.Pack(config)
    chain = listener_components_pb2.FilterChain(
        name=cluster if passthrough else f"{listener.name}:closed",
        filters=[listener_components_pb2.Filter(name=name, typed_config=packed)],
    )
    listener.filter_chains.append(chain)


def _bind_upstream_source(cluster: cluster_pb2.Cluster, destination: str) -> None:
    """Connections to the app leave from 127.0.0.6 (::6), the source iptables never redirects."""
    _bind_source(cluster, IPV6.inbound_source if _is_ipv6(destination) else IPV4.inbound_source)


def _bind_source(cluster: cluster_pb2.Cluster, source: str) -> None:
    cluster.upstream_bind_config.source_address.CopyFrom(
        address_pb2.SocketAddress(address=source, port_value=0)
    )


def _is_ipv6(address: str) -> bool:
    return ipaddress.ip_address(address).version == 6
