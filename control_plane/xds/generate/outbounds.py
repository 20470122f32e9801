"""One outbound service's chain and cluster, with the policies that shape calls to it applied."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2

from control_plane.policies.core.parts import OutboundParts
from control_plane.policies.core.rules import OutboundRules
from control_plane.xds.generate.clusters import outbound_cluster
from control_plane.xds.generate.listeners import assemble_chain, outbound_chain_parts
from control_plane.xds.generate.policies import apply_outbound_policies


def build_outbound(
    stats_name: str, service: str, protocol: str, rules: OutboundRules, chain_name: str = ""
) -> tuple[listener_components_pb2.FilterChain, cluster_pb2.Cluster]:
    """(the chain receiving calls to `service`, its plain-text cluster): fresh messages, so
    callers may share them between proxies with the same `rules` but must not edit them."""
    parts = OutboundParts(
        service,
        protocol,
        outbound_chain_parts(stats_name, service, protocol),
        outbound_cluster(service, protocol),
    )
    apply_outbound_policies(rules, parts)
    return assemble_chain(parts.chain, chain_name), parts.cluster
