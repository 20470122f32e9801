"""MeshLoadBalancingStrategy: how a proxy spreads calls over a service's instances (Kuma order 400)."""

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.meshloadbalancingstrategy.api import KIND, SECTIONS, MeshLoadBalancingStrategy
from control_plane.policies.meshloadbalancingstrategy.plugin import apply_outbound

POLICY = PolicyType(
    kind=KIND,
    plural="meshloadbalancingstrategies",
    model=MeshLoadBalancingStrategy,
    sections=SECTIONS,
    order=400,
    summary="the load-balancing algorithm (round robin, least request, ring hash, random, maglev) "
    "and what requests are hashed on, for outbounds (`to`)",
    apply_outbound=apply_outbound,
)
