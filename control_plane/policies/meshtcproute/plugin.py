"""MeshTCPRoute → the outbound's `tcp_proxy`: one backend → its cluster (a subset through
`metadata_match`), several → `weighted_clusters`. On an HTTP outbound whose routes no MeshHTTPRoute
changed (order 100, before this one), the catch-all route gets the same backends."""

from __future__ import annotations

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from control_plane.policies.core.parts import LB_METADATA, OutboundParts, add_subset_selector
from control_plane.policies.core.rules import MergedConf
from control_plane.policies.meshhttproute.api import BackendRef
from control_plane.policies.meshhttproute.plugin import backends_of_route, subset_struct, target_of
from control_plane.policies.meshtcproute.api import Merged


def apply_outbound(merged: MergedConf, parts: OutboundParts) -> None:
    conf: Merged = merged.parsed(Merged)
    if not conf.rules:
        return
    refs = conf.rules[-1].default.backendRefs
    if parts.chain.tcp_proxy is not None:
        _tcp_backends(parts.chain.tcp_proxy, refs, parts)
    elif parts.chain.hcm is not None and _untouched(parts):
        backends_of_route(parts.chain.routes()[0].route, refs, parts)


def _untouched(parts: OutboundParts) -> bool:
    routes = parts.chain.routes()
    return len(routes) == 1 and routes[0].match.prefix == "/" and routes[0].route.cluster == parts.service


def _tcp_backends(proxy: tcp_proxy_pb2.TcpProxy, refs: list[BackendRef], parts: OutboundParts) -> None:
    for ref in refs:
        if ref.tags:
            add_subset_selector(target_of(ref.name, parts).cluster, list(ref.tags))
        else:
            target_of(ref.name, parts)
    if len(refs) == 1:
        proxy.cluster = refs[0].name
        if refs[0].tags:
            proxy.metadata_match.filter_metadata[LB_METADATA].CopyFrom(subset_struct(refs[0]))
        return
    proxy.ClearField("cluster")
    for ref in refs:
        weighted = proxy.weighted_clusters.clusters.add(
            name=ref.name, weight=1 if ref.weight is None else ref.weight
        )
        if ref.tags:
            weighted.metadata_match.filter_metadata[LB_METADATA].CopyFrom(subset_struct(ref))
