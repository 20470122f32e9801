"""MeshFaultInjection: HTTP aborts, delays and response bandwidth limits, for inbounds per caller
and outbounds (Kuma order 800)."""

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.meshfaultinjection.api import KIND, SECTIONS, MeshFaultInjection
from control_plane.policies.meshfaultinjection.plugin import apply_inbound, apply_outbound

POLICY = PolicyType(
    kind=KIND,
    plural="meshfaultinjections",
    model=MeshFaultInjection,
    sections=SECTIONS,
    order=800,
    summary="HTTP faults (aborts, delays, response bandwidth limits) for a share of requests, into inbounds "
    "per caller (`from`, `rules`) and outbounds (`to`)",
    apply_outbound=apply_outbound,
    apply_inbound=apply_inbound,
)
