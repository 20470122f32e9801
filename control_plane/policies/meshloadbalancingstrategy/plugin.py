"""MeshLoadBalancingStrategy → Envoy, as Kuma maps it (what is unset keeps Envoy's default):
- loadBalancer.type → cluster.lb_policy: ROUND_ROBIN, LEAST_REQUEST, RING_HASH, RANDOM, MAGLEV;
- leastRequest → least_request_lb_config: choice_count, active_request_bias (a runtime
  double's default value);
- ringHash → ring_hash_lb_config: hash_function (XX_HASH | MURMUR_HASH_2), minimum_ring_size,
  maximum_ring_size; maglev → maglev_lb_config.table_size;
- hash policies (the top-level `hashPolicies`, else those of the chosen RingHash / Maglev) → the
  `hash_policy` list of every route of the outbound's HTTP chain: header, cookie{name, ttl, path},
  connection_properties{source_ip}, query_parameter, filter_state, each with `terminal`.
Two things Kuma gets wrong are done right here: type SourceIP (Kuma's older spelling of Connection)
becomes connection_properties{source_ip: true} (Kuma emits a hash policy with no specifier,
which Envoy refuses); and a TCP outbound, which has no routes, gets the first hash policy TCP can
use (Connection / SourceIP → source_ip, FilterState → filter_state) on its tcp_proxy, so RingHash
and Maglev keep a client on one instance there too (in Kuma a TCP outbound hashes nothing).
`localityAwareness` is refused by the schema (no multi-zone here), so endpoints keep one priority.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.v3 import hash_policy_pb2

from control_plane.policies.core.fields import decimal_of, set_duration
from control_plane.policies.core.parts import ChainParts, OutboundParts
from control_plane.policies.core.rules import MergedConf
from control_plane.policies.meshloadbalancingstrategy import api
from control_plane.policies.meshloadbalancingstrategy.api import HashPolicy, Merged, MergedLoadBalancer

Cluster = cluster_pb2.Cluster
RouteHashPolicy = route_components_pb2.RouteAction.HashPolicy

LB_POLICIES = {
    api.ROUND_ROBIN: Cluster.ROUND_ROBIN,
    api.LEAST_REQUEST: Cluster.LEAST_REQUEST,
    api.RING_HASH: Cluster.RING_HASH,
    api.RANDOM: Cluster.RANDOM,
    api.MAGLEV: Cluster.MAGLEV,
}
HASH_FUNCTIONS = {
    "XXHash": Cluster.RingHashLbConfig.XX_HASH,
    "MurmurHash2": Cluster.RingHashLbConfig.MURMUR_HASH_2,
}


def apply_outbound(merged: MergedConf, parts: OutboundParts) -> None:
    conf: Merged = merged.parsed(Merged)
    if conf.loadBalancer is not None:
        _configure_cluster(conf.loadBalancer, parts.cluster)
    policies = conf.hash_policies()
    if policies:
        _configure_chain(policies, parts.chain)


def _configure_cluster(lb: MergedLoadBalancer, cluster: cluster_pb2.Cluster) -> None:
    cluster.lb_policy = LB_POLICIES[lb.type]
    if lb.type == api.LEAST_REQUEST and lb.leastRequest is not None:
        config = cluster.least_request_lb_config
        config.SetInParent()
        if lb.leastRequest.choiceCount is not None:
            config.choice_count.value = lb.leastRequest.choiceCount
        if lb.leastRequest.activeRequestBias is not None:
            config.active_request_bias.default_value = float(decimal_of(lb.leastRequest.activeRequestBias))
    elif lb.type == api.RING_HASH and lb.ringHash is not None:
        ring, config = lb.ringHash, cluster.ring_hash_lb_config
        config.SetInParent()
        if ring.hashFunction is not None:
            config.hash_function = HASH_FUNCTIONS[ring.hashFunction]
        if ring.maxRingSize is not None:
            config.maximum_ring_size.value = ring.maxRingSize
        if ring.minRingSize is not None:
            # One entry cannot have min > max, but a merge of two entries can: the maximum (a
            # memory ceiling) then bounds the minimum, so Envoy does not refuse the cluster.
            config.minimum_ring_size.value = min(ring.minRingSize, ring.maxRingSize or api.MAX_RING_SIZE)
    elif lb.type == api.MAGLEV and lb.maglev is not None:
        cluster.maglev_lb_config.SetInParent()
        if lb.maglev.tableSize is not None:
            cluster.maglev_lb_config.table_size.value = lb.maglev.tableSize


def _configure_chain(policies: list[HashPolicy], chain: ChainParts) -> None:
    for route in chain.routes():
        del route.route.hash_policy[:]
        route.route.hash_policy.extend(route_hash_policy(p) for p in policies)
    if chain.tcp_proxy is not None:
        del chain.tcp_proxy.hash_policy[:]
        usable = [found for found in map(tcp_hash_policy, policies) if found is not None]
        chain.tcp_proxy.hash_policy.extend(usable[:1])  # Envoy takes at most one


def route_hash_policy(policy: HashPolicy) -> route_components_pb2.RouteAction.HashPolicy:
    found = RouteHashPolicy(terminal=bool(policy.terminal))
    if policy.type == api.HEADER:
        assert policy.header is not None
        found.header.header_name = policy.header.name
    elif policy.type == api.COOKIE:
        assert policy.cookie is not None
        found.cookie.name = policy.cookie.name
        found.cookie.path = policy.cookie.path or ""
        if policy.cookie.ttl is not None:
            set_duration(found.cookie.ttl, policy.cookie.ttl, 0)
    elif policy.type in (api.CONNECTION, api.SOURCE_IP):
        found.connection_properties.source_ip = True
    elif policy.type == api.QUERY_PARAMETER:
        assert policy.queryParameter is not None
        found.query_parameter.name = policy.queryParameter.name
    else:
        assert policy.filterState is not None
        found.filter_state.key = policy.filterState.key
    return found


def tcp_hash_policy(policy: HashPolicy) -> hash_policy_pb2.HashPolicy | None:
    """What a TCP proxy can hash on: the source IP or a filter-state object; None otherwise."""
    if policy.type in (api.CONNECTION, api.SOURCE_IP):
        return hash_policy_pb2.HashPolicy(source_ip=hash_policy_pb2.HashPolicy.SourceIp())
    if policy.type == api.FILTER_STATE:
        assert policy.filterState is not None
        by_key = hash_policy_pb2.HashPolicy.FilterState(key=policy.filterState.key)
        return hash_policy_pb2.HashPolicy(filter_state=by_key)
    return None
