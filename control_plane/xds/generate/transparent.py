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

Known services are reached through filter chains of the 15001 listener, one `outbound:<service>`
chain per service, picked by a `filter_chain_matcher`: destination port, then destination IP in a
trie of the endpoints' /32 (/128) ranges. Why:
- Size: a proxy's LDS is O(services) chains + a few bytes per endpoint. One `outbound:<ip>:<port>`
  listener per endpoint (Kuma's way, our former design) made it ~388 KB per proxy in a mesh of 1,000
  endpoints, all resent to every proxy on every endpoint change.
- Same behaviour: a chain is built by the code explicit outbounds use (`filter_chain`: protocol,
  routes, the service's cluster, mTLS by that cluster), so the two modes cannot drift; a call to
  any endpoint's address reaches its *service*, balanced over all endpoints, as with Kuma's VIPs.
- No draining: endpoints coming or going change the matcher only. Envoy (checked with 1.40)
  updates a listener in place when only its chains or matcher change and drains only chains that
  changed: here none. Filter chains with `filter_chain_match.prefix_ranges` would drain the whole
  service's chain on each of its endpoint changes; one listener per service with the endpoints in
  `additional_addresses` (it does receive `use_original_dst` hand-offs) would drain the listener.
- Shadowing for free: Envoy hands a redirected connection to the listener whose address is its
  original destination before looking at 15001's chains, so the proxy's own inbounds keep their
  addresses and the chains can list every endpoint of the mesh: one listener shared by every proxy
  of the mesh set up alike (IP families, redirect port, passthrough), serialized once.
The IP matcher's protos are marked work-in-progress upstream (Envoy logs a warning on load).
"""

from __future__ import annotations

import ipaddress
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.direct_response.v3 import config_pb2 as direct_response_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from google.protobuf.message import Message
from xds.core.v3 import cidr_pb2, extension_pb2
from xds.type.matcher.v3 import ip_pb2, matcher_pb2

from control_plane.policies.core.rules import OutboundRules
from control_plane.resources.common import SERVICE_TAG
from control_plane.resources.dataplane import Dataplane, Outbound, TransparentProxying
from control_plane.resources.mesh import Mesh
from control_plane.xds.generate.clusters import CONNECT_TIMEOUT_S
from control_plane.xds.generate.dns import dns_records_route
from control_plane.xds.generate.endpoints import EndpointIndex, socket_address
from control_plane.xds.generate.listeners import TCP_PROXY_FILTER
from control_plane.xds.generate.outbounds import OutboundBuild
from control_plane.xds.generate.pack import pack
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
    every service, in service order (two services on one address and port: the first wins).

    What depends on the mesh only (the redirect listeners' chains and matcher, plain-text clusters,
    load assignments) is built once and the same message given to every proxy of the mesh: the
    Packer then serializes it once, not once per proxy. Policies that shape outbounds make part of
    the key: proxies selecting the same policies (all of them, with mesh-wide policies) share one
    build; a proxy a Dataplane-targeted policy selects gets (and shares with its likes) another.
    """

    _by_index: weakref.WeakKeyDictionary[EndpointIndex, ImpliedOutbounds] = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, index: EndpointIndex) -> None:
        by_address: dict[tuple[str, int], Outbound] = {}
        # A service in its VIP's grace period (no endpoint left) keeps an outbound on its VIP: a
        # call to it is refused at once by the proxy instead of hanging on a VIP nobody routes.
        vip_only = set(index.names.vips) - set(index.services()) if index.names is not None else set()
        for service in sorted({*index.services(), *vip_only}):
            for address, port in _destinations(index, service):
                # Built from already validated Dataplanes: skip validating them once more.
                outbound = Outbound.model_construct(port=port, address=address, tags={SERVICE_TAG: service})
                by_address.setdefault((address, port), outbound)
        self.outbounds = list(by_address.values())
        self._index = index
        self._every: dict[tuple[tuple[str, str], ...], MeshOutbounds] = {}  # outbound rules' key → build
        self._dns_route: route_pb2.RouteConfiguration | None = None

    @classmethod
    def of(cls, index: EndpointIndex) -> ImpliedOutbounds:
        """The shared set of the mesh whose endpoints `index` holds (built on first use)."""
        with cls._lock:
            implied = cls._by_index.get(index)
            if implied is None:
                implied = cls._by_index[index] = cls(index)
            return implied

    def for_proxy(self, dataplane: Dataplane) -> list[Outbound]:
        """What `dataplane` may reach: `reachableServices` narrows the set, as in Kuma. Its own
        inbounds stay in: Envoy hands a connection to their address to their `inbound:` listener
        before the 15001 listener's chains are looked at, so they shadow the outbound."""
        tp = dataplane.networking.transparentProxying or TransparentProxying()
        if tp.reachableServices is None:
            return self.outbounds
        reachable = set(tp.reachableServices)
        return [o for o in self.outbounds if o.service in reachable]

    def dns_route(self) -> route_pb2.RouteConfiguration | None:
        """The mesh's DNS records as the route table every proxy's records listener serves
        (None when service names are off)."""
        names = self._index.names
        if names is None:
            return None
        with self._lock:
            if self._dns_route is None:
                self._dns_route = dns_records_route(names.records)
            return self._dns_route

    def every(self, rules: OutboundRules) -> MeshOutbounds:
        """Every implied outbound's chain, cluster and load assignment under `rules`, built once
        per mesh and set of outbound policies."""
        with self._lock:
            every = self._every.get(rules.key)
        if every is None:
            every = MeshOutbounds.build(self.outbounds, self._index, rules)
            with self._lock:
                every = self._every.setdefault(rules.key, every)
        return every


def _destinations(index: EndpointIndex, service: str) -> list[tuple[str, int]]:
    """Where a call reaches `service`: each endpoint's address and port, and its virtual IP (if it
    has one) on each of those ports and on the mesh's service VIP port (80), as in Kuma (on 80
    only while the service has no endpoint)."""
    endpoints = index.endpoints(service)
    destinations = [(e.address, e.port) for e in endpoints]
    names = index.names
    vip = names.vips.get(service) if names is not None else None
    if vip is not None and names is not None:
        ports = sorted({e.port for e in endpoints} | {names.vip_port})
        destinations.extend((vip, port) for port in ports)
    return destinations


@dataclass(frozen=True)
class MeshOutbounds:
    """The outbound part transparent proxies of a mesh share, as ready resource dicts: a proxy
    takes them as the base of its Overlays. Clusters are shared only without mTLS (with it they
    name the proxy's own certificate files)."""

    outbounds: list[Outbound]
    chains: dict[str, listener_components_pb2.FilterChain]  # service → its `outbound:<service>` chain
    clusters: dict[str, cluster_pb2.Cluster]  # service → plain-text EDS cluster
    load_assignments: dict[str, Message]  # service → its ClusterLoadAssignment
    protocols: dict[str, str]  # service → protocol (routes' backends the chains lack included)
    # (families, redirect port, passthrough) → the redirect listeners of proxies set up so
    _listeners: dict[tuple[tuple[str, ...], int, bool], dict[str, listener_pb2.Listener]] = field(
        default_factory=dict
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, outbounds: list[Outbound], index: EndpointIndex, rules: OutboundRules) -> MeshOutbounds:
        build = transparent_build(outbounds, index, rules)
        clusters, protocols = build.clusters(), build.protocols
        assignments: dict[str, Message] = {s: index.load_assignment(s) for s in clusters}
        return cls(outbounds, build.chains(), clusters, assignments, protocols)

    def listeners_for(self, dataplane: Dataplane, mesh: Mesh | None) -> dict[str, listener_pb2.Listener]:
        """The proxy's outbound redirect listeners: one dict object for every proxy set up alike."""
        tp = dataplane.networking.transparentProxying or TransparentProxying()
        families = ip_families(dataplane)
        key = (tuple(f.name for f in families), tp.redirectPortOutbound, mesh_passthrough(mesh))
        with self._lock:
            hit = self._listeners.get(key)
        if hit is None:
            hit = outbound_redirect_listeners(dataplane, mesh, self.outbounds, self.chains)
            with self._lock:
                hit = self._listeners.setdefault(key, hit)
        return hit


def transparent_build(
    outbounds: Iterable[Outbound], index: EndpointIndex, rules: OutboundRules
) -> OutboundBuild:
    """Each service reached: its `outbound:<service>` chain and cluster, with the policies applied."""
    build = OutboundBuild(index.protocol, rules)
    for service in sorted({o.service for o in outbounds}):
        build.add(service, outbound_chain_name(service), outbound_chain_name(service))
    return build.apply()


def outbound_redirect_listeners(
    dataplane: Dataplane,
    mesh: Mesh | None,
    outbounds: list[Outbound],
    chains: Mapping[str, listener_components_pb2.FilterChain],
) -> dict[str, listener_pb2.Listener]:
    """`outbound:passthrough:<family>` on the outbound redirect port, one per IP family: a chain per
    service reached (the code explicit outbounds use), picked by the connection's original
    destination port then IP; any other destination takes the default (passthrough or closed)."""
    tp = dataplane.networking.transparentProxying or TransparentProxying()
    listeners = {}
    for family in ip_families(dataplane):
        name = outbound_passthrough_name(family)
        listener = _passthrough_listener(name, family, tp.redirectPortOutbound, base_pb2.OUTBOUND)
        listener.default_filter_chain.CopyFrom(_default_chain(name, name, mesh_passthrough(mesh)))
        mine = [o for o in outbounds if _is_ipv6(o.address or "") == (family is IPV6)]
        listener.filter_chains.extend(chains[service] for service in sorted({o.service for o in mine}))
        if mine:
            listener.filter_chain_matcher.CopyFrom(outbound_matcher(mine, family))
        listeners[name] = listener
    return listeners


def outbound_chain_name(service: str) -> str:
    return f"outbound:{service}"


def outbound_matcher(outbounds: Iterable[Outbound], family: IpFamily) -> matcher_pb2.Matcher:
    """Destination port → destination IP (a trie of /32 or /128 ranges, grouped by service) →
    the service's chain name: a few bytes per endpoint. Only this matcher changes when endpoints
    come and go, so Envoy updates the listener in place and drains no chain."""
    by_port: dict[int, dict[str, list[str]]] = {}
    for outbound in outbounds:
        by_port.setdefault(outbound.port, {}).setdefault(outbound.service, []).append(outbound.address or "")
    prefix_len = wrappers_pb2.UInt32Value(value=128 if family is IPV6 else 32)
    ports = matcher_pb2.Matcher.MatcherTree.MatchMap()
    for port, services in sorted(by_port.items()):
        ip = ip_pb2.IPMatcher()
        for service, addresses in services.items():
            chain = wrappers_pb2.StringValue(value=outbound_chain_name(service))
            ip.range_matchers.add(
                ranges=[cidr_pb2.CidrRange(address_prefix=a, prefix_len=prefix_len) for a in addresses],
                on_match=matcher_pb2.Matcher.OnMatch(action=_extension("chain", chain)),
            )
        tree = matcher_pb2.Matcher.MatcherTree(
            input=_extension("destination-ip", network_inputs_pb2.DestinationIPInput()),
            custom_match=_extension("ip", ip),
        )
        ports.map[str(port)].matcher.matcher_tree.CopyFrom(tree)
    return matcher_pb2.Matcher(
        matcher_tree=matcher_pb2.Matcher.MatcherTree(
            input=_extension("destination-port", network_inputs_pb2.DestinationPortInput()),
            exact_match_map=ports,
        )
    )


def _extension(name: str, config: Message) -> extension_pb2.TypedExtensionConfig:
    return extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(config))


def add_transparent_proxying(
    dataplane: Dataplane, resources: dict[str, dict[str, Message]], *, strict: bool
) -> None:
    """Turn the proxy's inbound/outbound config (already in `resources`) into its transparent form.
    `strict`: its inbounds take mTLS only (the mesh's STRICT mode, unless MeshTLS says otherwise for
    all of them), so redirected traffic for other ports is closed instead of passed through."""
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
        inbound = _passthrough_listener(
            inbound_passthrough_name(family), family, tp.redirectPortInbound, base_pb2.INBOUND
        )
        chain = _default_chain(inbound.name, inbound_passthrough_name(family), not strict)
        inbound.filter_chains.append(chain)
        listeners[inbound.name] = inbound
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


def _default_chain(
    listener_name: str, cluster: str, passthrough: bool
) -> listener_components_pb2.FilterChain:
    stats = stat_prefix(listener_name)
    if passthrough:
        config: Message = tcp_proxy_pb2.TcpProxy(stat_prefix=stats, cluster=cluster)
        name = TCP_PROXY_FILTER
    else:
        # An empty direct response closes the connection at once.
        config, name = direct_response_pb2.Config(), DIRECT_RESPONSE_FILTER
    return listener_components_pb2.FilterChain(
        name=cluster if passthrough else f"{listener_name}:closed",
        filters=[listener_components_pb2.Filter(name=name, typed_config=pack(config))],
    )


def _bind_upstream_source(cluster: cluster_pb2.Cluster, destination: str) -> None:
    """Connections to the app leave from 127.0.0.6 (::6), the source iptables never redirects."""
    _bind_source(cluster, IPV6.inbound_source if _is_ipv6(destination) else IPV4.inbound_source)


def _bind_source(cluster: cluster_pb2.Cluster, source: str) -> None:
    cluster.upstream_bind_config.source_address.CopyFrom(
        address_pb2.SocketAddress(address=source, port_value=0)
    )


def _is_ipv6(address: str) -> bool:
    return ipaddress.ip_address(address).version == 6
