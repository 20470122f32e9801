"""Everything one proxy needs, from its Dataplane, the rest of its mesh and the mesh's policies:
a pure function."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from google.protobuf.message import Message

from control_plane.policies.core.parts import InboundParts, ProxyInfo, ProxyResources
from control_plane.policies.core.rules import MeshPolicies, OutboundRules
from control_plane.policies.loading import mesh_policies
from control_plane.policies.meshmetric.plugin import apply_mesh_metrics
from control_plane.policies.registry import BY_KIND
from control_plane.resources.dataplane import Dataplane, Outbound
from control_plane.resources.mesh import Mesh
from control_plane.xds.generate.clusters import local_cluster, secure_cluster
from control_plane.xds.generate.dns import dns_records_listener
from control_plane.xds.generate.endpoints import EndpointIndex
from control_plane.xds.generate.listeners import inbound_listener, inbound_parts, outbound_listener
from control_plane.xds.generate.outbounds import OutboundBuild
from control_plane.xds.generate.overlay import Overlay
from control_plane.xds.generate.policies import (
    PER_PROXY_OUTBOUND,
    apply_inbound_policies,
    apply_proxy_policies,
)
from control_plane.xds.generate.protocol import tags_protocol
from control_plane.xds.generate.tls import InboundMtls, upstream_tls
from control_plane.xds.generate.transparent import (
    ImpliedOutbounds,
    MeshOutbounds,
    add_transparent_proxying,
    is_transparent,
    outbound_redirect_listeners,
    transparent_build,
)
from control_plane.xds.names import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    outbound_listener_name,
)

# type URL → resource name → message
Resources = dict[str, dict[str, Message]]
MESH_METRIC = BY_KIND["MeshMetric"]  # Kuma's older Mesh.metrics applies where no MeshMetric does


@dataclass(frozen=True)
class ProxyContext:
    """What the generator knows of one proxy beyond its Dataplane: what its Envoy told us."""

    workdir: str | None = None  # node metadata `workdir`: where the agent keeps the SDS files


class MissingWorkdir(ValueError):
    """mTLS is on but the proxy did not say where its certificates are (no `workdir` metadata)."""


class SnapshotGenerator(Protocol):
    def __call__(
        self,
        dataplane: Dataplane,
        mesh_dataplanes: Sequence[Dataplane],
        mesh: Mesh | None,
        *,
        endpoints: EndpointIndex | None = None,
        context: ProxyContext | None = None,
        policies: MeshPolicies | None = None,
    ) -> Resources: ...


def generate_snapshot(
    dataplane: Dataplane,
    mesh_dataplanes: Sequence[Dataplane],
    mesh: Mesh | None,
    *,
    endpoints: EndpointIndex | None = None,
    context: ProxyContext | None = None,
    policies: MeshPolicies | None = None,
) -> Resources:
    """Listeners, clusters and endpoints of `dataplane`, shaped by the mesh's `policies`.

    `endpoints` is the index of `mesh_dataplanes`; pass it when generating for many proxies of one
    mesh so the index (and each service's load assignment) is built once, not once per proxy; the
    same goes for `policies` (per-proxy rules are cached in it). With the mesh's mTLS on,
    `context.workdir` is required (else MissingWorkdir).
    """
    index = endpoints if endpoints is not None else EndpointIndex(mesh_dataplanes)
    policies = policies if policies is not None else mesh_policies(dataplane.mesh)
    context = context or ProxyContext()
    resources = _proxy_resources(dataplane, mesh, index, context, policies)
    apply_proxy_policies(policies, dataplane, resources, context.workdir)
    if mesh is not None and mesh.metrics and policies.proxy_conf(MESH_METRIC, dataplane) is None:
        apply_mesh_metrics(mesh.metrics, ProxyResources(resources, ProxyInfo.of(dataplane, context.workdir)))
    return resources


def _proxy_resources(
    dataplane: Dataplane,
    mesh: Mesh | None,
    index: EndpointIndex,
    context: ProxyContext,
    policies: MeshPolicies,
) -> Resources:
    resources: Resources = {CLUSTER_TYPE: {}, ENDPOINT_TYPE: {}, LISTENER_TYPE: {}, ROUTE_TYPE: {}}
    mtls = _mesh_mtls(dataplane, mesh, context)
    mtls = _shaped_by_inbounds(mtls, _add_inbounds(dataplane, resources, mtls, policies, context.workdir))
    rules = policies.outbound_rules(dataplane).for_proxy(
        ProxyInfo.of(dataplane, context.workdir), PER_PROXY_OUTBOUND
    )
    if not is_transparent(dataplane):
        _add_outbounds(dataplane, dataplane.networking.outbound, index, resources, mtls, rules)
        return resources
    # The proxy's own resources first: a name taken here is never replaced by an outbound one.
    add_transparent_proxying(dataplane, resources, strict=mtls is not None and not mtls.permissive)
    implied = ImpliedOutbounds.of(index)
    _add_dns_records(implied, context, resources)
    tp = dataplane.networking.transparentProxying
    if tp is not None and tp.reachableServices is None:
        _add_mesh_outbounds(dataplane, mesh, implied.every(rules), resources, mtls)
        return resources
    outbounds = implied.for_proxy(dataplane)
    build = transparent_build(outbounds, index, rules)
    _add_clusters(build, index, resources, mtls)
    resources[LISTENER_TYPE].update(outbound_redirect_listeners(dataplane, mesh, outbounds, build.chains()))
    return resources


def _add_dns_records(implied: ImpliedOutbounds, context: ProxyContext, resources: Resources) -> None:
    """The listener the agent reads the mesh's DNS records from, and the shared records, if the
    mesh has service names and the proxy said where its agent works."""
    route = implied.dns_route()
    listener = dns_records_listener(context.workdir) if route is not None and context.workdir else None
    if listener is not None and route is not None:
        resources[LISTENER_TYPE][listener.name] = listener
        resources[ROUTE_TYPE][route.name] = route


def _mesh_mtls(dataplane: Dataplane, mesh: Mesh | None, context: ProxyContext) -> InboundMtls | None:
    """The mesh's mTLS settings for this proxy, or None (off)."""
    backend = mesh.mtls.enabled if mesh is not None and mesh.mtls is not None else None
    if backend is None:
        return None
    if not context.workdir:
        raise MissingWorkdir(
            f"mesh {dataplane.mesh!r} has mTLS on, but the proxy of Dataplane {dataplane.name!r} sent no "
            "`workdir` in its node metadata, so its certificate files cannot be named; "
            "it gets no configuration (run it with kuma-dp)"
        )
    return InboundMtls(
        mesh=dataplane.mesh,
        workdir=context.workdir,
        permissive=backend.mode == "PERMISSIVE",
        certificate_lifetime_s=mesh.mtls.certificate_lifetime_s(),
    )


def _shaped_by_inbounds(mtls: InboundMtls | None, inbounds: list[InboundParts]) -> InboundMtls | None:
    """What policies said of the proxy's inbounds that concerns the whole proxy (MeshTLS): its mTLS
    connections' TLS parameters (the same on every inbound: only mesh-wide policies set them) and,
    for its inbound passthrough, whether every inbound is permissive (else the mesh's mode holds)."""
    if mtls is None or not inbounds:
        return mtls
    parameters = next((p.tls_parameters for p in inbounds if p.tls_parameters is not None), None)
    return replace(mtls, permissive=all(p.permissive for p in inbounds), tls_parameters=parameters)


def _add_inbounds(
    dataplane: Dataplane,
    resources: Resources,
    mtls: InboundMtls | None,
    policies: MeshPolicies,
    workdir: str | None,
) -> list[InboundParts]:
    """Each inbound's listener and application cluster, shaped by the inbound policies."""
    clusters = resources[CLUSTER_TYPE]
    shaped = []
    for inbound in dataplane.networking.inbound:
        protocol = tags_protocol(inbound.tags)
        cluster = local_cluster(inbound, protocol)
        # Two inbounds sharing a servicePort share Kuma's `localhost:<port>` name: the first wins.
        owned = cluster if cluster.name not in clusters else None
        parts = inbound_parts(dataplane, inbound, protocol, mtls, owned)
        parts.workdir = workdir
        apply_inbound_policies(policies, parts)
        listener = inbound_listener(parts, mtls)
        resources[LISTENER_TYPE][listener.name] = listener
        if owned is not None:
            clusters[owned.name] = owned
        shaped.append(parts)
    return shaped


def _add_outbounds(
    dataplane: Dataplane,
    outbounds: Sequence[Outbound],
    index: EndpointIndex,
    resources: Resources,
    mtls: InboundMtls | None,
    rules: OutboundRules,
) -> None:
    """One listener per outbound; outbounds of one service share its chain (named for the first)."""
    build = OutboundBuild(index.protocol, rules)
    for outbound in outbounds:
        build.add(
            outbound.service, outbound_listener_name(dataplane.outbound_address(outbound), outbound.port)
        )
    chains = build.apply().chains()
    for outbound in outbounds:
        listener = outbound_listener(dataplane, outbound, chains[outbound.service])
        resources[LISTENER_TYPE].setdefault(listener.name, listener)
    _add_clusters(build, index, resources, mtls)


def _add_clusters(
    build: OutboundBuild, index: EndpointIndex, resources: Resources, mtls: InboundMtls | None
) -> None:
    """Each service's cluster (made secure with mTLS) and load assignment, unless the proxy's own
    clusters took the name."""
    protocols = build.protocols
    for service, cluster in build.clusters().items():
        if service in resources[CLUSTER_TYPE]:
            continue
        if mtls is not None:
            tls = upstream_tls(mtls.mesh, service, mtls.workdir, mtls.tls_parameters)
            cluster = secure_cluster(cluster, protocols[service], tls, mtls.max_connection_duration_s)
        resources[CLUSTER_TYPE][service] = cluster
        resources[ENDPOINT_TYPE][service] = index.load_assignment(service)


def _add_mesh_outbounds(
    dataplane: Dataplane,
    mesh: Mesh | None,
    shared: MeshOutbounds,
    resources: Resources,
    mtls: InboundMtls | None,
) -> None:
    """What the per-outbound path gives a proxy reaching every implied outbound, from the mesh's
    shared dicts (its own inbounds need no removal: their listeners shadow the outbound)."""
    clusters = resources[CLUSTER_TYPE]
    # A service whose name the proxy's own clusters already use gets neither (as _add_outbounds).
    dropped = clusters.keys() & shared.protocols.keys()
    redirect = shared.listeners_for(dataplane, mesh)
    resources[LISTENER_TYPE] = Overlay(redirect, resources[LISTENER_TYPE], ())
    resources[ENDPOINT_TYPE] = Overlay(shared.load_assignments, resources[ENDPOINT_TYPE], dropped)
    if mtls is None:
        resources[CLUSTER_TYPE] = Overlay(shared.clusters, clusters, dropped)
        return
    for service, protocol in shared.protocols.items():  # with mTLS, clusters name the proxy's files
        if service not in dropped:
            tls = upstream_tls(mtls.mesh, service, mtls.workdir, mtls.tls_parameters)
            clusters[service] = secure_cluster(
                shared.clusters[service], protocol, tls, mtls.max_connection_duration_s
            )
