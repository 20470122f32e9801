"""MeshRateLimit: local rate limits of requests and connections, for inbounds and outbounds (Kuma
order 900)."""

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.meshratelimit.api import KIND, SECTIONS, MeshRateLimit
from control_plane.policies.meshratelimit.plugin import apply_inbound, apply_outbound

POLICY = PolicyType(
    kind=KIND,
    plural="meshratelimits",
    model=MeshRateLimit,
    sections=SECTIONS,
    order=900,
    summary="local rate limits: HTTP requests and TCP connections per interval (token buckets), "
    "for inbounds (`from`, `rules`) and outbounds (`to`)",
    from_as_rules=True,
    apply_outbound=apply_outbound,
    apply_inbound=apply_inbound,
)
