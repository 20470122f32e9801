"""MeshCircuitBreaker: connection limits and outlier detection of outbounds and inbounds (Kuma
order 1300)."""

from control_plane.policies.core.plugin import InitialPolicy, PolicyType
from control_plane.policies.meshcircuitbreaker.api import INITIAL_SPEC, KIND, SECTIONS, MeshCircuitBreaker
from control_plane.policies.meshcircuitbreaker.plugin import apply_inbound, apply_outbound

POLICY = PolicyType(
    kind=KIND,
    plural="meshcircuitbreakers",
    model=MeshCircuitBreaker,
    sections=SECTIONS,
    order=1300,
    summary="connection limits and outlier detection, for outbounds (`to`) and inbounds (`from`, `rules`)",
    from_as_rules=True,
    apply_outbound=apply_outbound,
    apply_inbound=apply_inbound,
    initial=InitialPolicy("mesh-circuit-breaker-all", INITIAL_SPEC),
)
