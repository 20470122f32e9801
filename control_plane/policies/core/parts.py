"""What a plugin edits: the proxy's generated config for one inbound or one outbound, unpacked.

The generator builds these, hands them to every plugin in Kuma's order, then packs them into
listeners and clusters. Plugins change the messages in place; each message here belongs to one
inbound or outbound of one build (a fresh object, never one shared with other proxies), so
editing it cannot leak into another proxy's config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf.message import Message

from control_plane.resources.dataplane import Dataplane, Inbound

HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True)
class ProxyInfo:
    """Who a proxy is, for plugins whose config names it (MeshAccessLog's socket of its agent).
    Outbound parts carry it only in builds made for one proxy: a kind's `outbound_per_proxy` says
    which of its confs need it, and keys the mesh-wide shared build by the proxy for those."""

    mesh: str
    name: str
    address: str  # Kuma's GetIP: the advertised address, else the address
    service: str  # Kuma's identifying service: the smallest inbound service name, "unknown" without one
    zone: str = ""  # the Dataplane's `kuma.io/zone` label
    workdir: str | None = None  # the agent's work dir (node metadata), where its sockets are

    @classmethod
    def of(cls, dataplane: Dataplane, workdir: str | None) -> ProxyInfo:
        networking = dataplane.networking
        services = sorted(dataplane.services)
        return cls(
            mesh=dataplane.mesh,
            name=dataplane.name,
            address=networking.advertisedAddress or networking.address,
            service=services[0] if services else "unknown",
            zone=(dataplane.labels or {}).get("kuma.io/zone", ""),
            workdir=workdir,
        )


@dataclass
class ChainParts:
    """One filter chain before packing: HTTP (`hcm`, its routes inline) or TCP (`tcp_proxy`)."""

    stat_prefix: str
    hcm: hcm.HttpConnectionManager | None = None
    tcp_proxy: tcp_proxy_pb2.TcpProxy | None = None
    network_filters: list[listener_components_pb2.Filter] = field(default_factory=list)  # before the main one
    secure: bool = False  # terminates the mesh's mTLS (an inbound chain for mesh peers)

    def routes(self) -> list[route_components_pb2.Route]:
        if self.hcm is None:
            return []
        return [route for vh in self.hcm.route_config.virtual_hosts for route in vh.routes]


@dataclass
class InboundParts:
    """One inbound: its listener's chains and the cluster of the application behind it (None when
    another inbound of the proxy owns it). With mTLS there are two chains, mesh peers' (`secure`)
    and plaintext; the plaintext one is served only when `permissive` (the mesh's mode, unless a
    policy says otherwise for this inbound). `tls_parameters` (versions, ciphers) go on the
    secure chain's TLS context."""

    dataplane: Dataplane
    inbound: Inbound
    protocol: str
    chains: list[ChainParts]
    cluster: cluster_pb2.Cluster | None
    mtls: bool  # the mesh has mTLS on (callers are identified by their certificate)
    permissive: bool = False
    tls_parameters: common_pb2.TlsParameters | None = None
    workdir: str | None = None  # the agent's work dir (node metadata), where its sockets are

    @property
    def mesh(self) -> str:
        return self.dataplane.mesh


class Outbounds(Protocol):
    """The other outbounds of the same build (a route's backends live there)."""

    def get(self, service: str) -> OutboundParts | None:
        """The parts of `service` if the build has it."""

    def require(self, service: str) -> OutboundParts:
        """The parts of `service`, made (cluster only, with its own policies) if the build lacks it."""


@dataclass
class OutboundParts:
    """Calls to one service: the chain that receives them and the cluster they go to. `outbounds`
    reaches the other services of the same build: a policy may edit their clusters too (a route
    adds the subsets it sends to) but nothing outside the build."""

    service: str
    protocol: str
    chain: ChainParts
    cluster: cluster_pb2.Cluster
    outbounds: Outbounds | None = None
    # The calling service, only when a policy's outbound edits depend on it (see
    # PolicyType.outbound_per_caller); "" for a build proxies of many services share.
    caller: str = ""
    proxy: ProxyInfo | None = None  # set in builds made for one proxy (see ProxyInfo)


def http_protocol_options(cluster: cluster_pb2.Cluster) -> http_protocol_options_pb2.HttpProtocolOptions:
    """The cluster's HttpProtocolOptions (a copy: write it back with `set_http_protocol_options`)."""
    options = http_protocol_options_pb2.HttpProtocolOptions()
    packed = cluster.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS_KEY)
    if packed is not None:
        packed.Unpack(options)
    return options


def set_http_protocol_options(
    cluster: cluster_pb2.Cluster, options: http_protocol_options_pb2.HttpProtocolOptions
) -> None:
    if not options.HasField("explicit_http_config") and not options.HasField(
        "use_downstream_protocol_config"
    ):
        options.explicit_http_config.http_protocol_options.SetInParent()  # Envoy needs the protocol named
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].Pack(options)


LB_METADATA = "envoy.lb"  # where endpoints carry their tags (endpoints.py), what subsets match on


def add_subset_selector(cluster: cluster_pb2.Cluster, keys: list[str] | tuple[str, ...]) -> None:
    """Let routes pick the cluster's endpoints by these tag keys (`metadata_match` on `envoy.lb`).

    Calls without a subset still reach every endpoint (ANY_ENDPOINT); a subset no endpoint has
    fails as no healthy upstream (NO_FALLBACK): traffic meant for `version: v2` never reaches v1."""
    wanted = sorted(keys)
    config = cluster.lb_subset_config
    config.fallback_policy = cluster_pb2.Cluster.LbSubsetConfig.ANY_ENDPOINT
    if any(list(selector.keys) == wanted for selector in config.subset_selectors):
        return
    selector = config.subset_selectors.add(keys=wanted)
    selector.fallback_policy = cluster_pb2.Cluster.LbSubsetConfig.LbSubsetSelector.NO_FALLBACK


class ProxyResources:
    """All of one proxy's generated config, by xDS type URL and name, for the policies applied
    last to the whole proxy (MeshProxyPatch). Messages may be shared with other proxies: read them
    with `get`, change them only through `edit` (this proxy's own copy), `put` and `remove`."""

    def __init__(self, resources: dict[str, dict[str, Message]], proxy: ProxyInfo | None = None) -> None:
        self._resources = resources
        self.proxy = proxy  # who the proxy is (MeshMetric's listener address and agent sockets)

    def names(self, type_url: str) -> list[str]:
        return sorted(self._resources.get(type_url, {}))

    def get(self, type_url: str, name: str) -> Message | None:
        return self._resources.get(type_url, {}).get(name)

    def edit(self, type_url: str, name: str) -> Message:
        """This proxy's own copy of a resource, already in its config: change it in place."""
        current = self._resources[type_url][name]
        copy = type(current)()
        copy.CopyFrom(current)
        self._resources[type_url][name] = copy
        return copy

    def put(self, type_url: str, name: str, message: Message) -> None:
        self._resources.setdefault(type_url, {})[name] = message

    def remove(self, type_url: str, name: str) -> None:
        named = self._resources.get(type_url, {})
        if name in named:
            del named[name]
