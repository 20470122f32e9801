"""MeshTimeout: connection, idle and request timeouts of outbounds and inbounds (Kuma order 1000)."""

from control_plane.policies.core.plugin import InitialPolicy, PolicyType
from control_plane.policies.meshtimeout.api import INITIAL_SPEC, KIND, SECTIONS, MeshTimeout
from control_plane.policies.meshtimeout.plugin import apply_inbound, apply_outbound

POLICY = PolicyType(
    kind=KIND,
    plural="meshtimeouts",
    model=MeshTimeout,
    sections=SECTIONS,
    order=1000,
    summary="connect, idle, request and stream timeouts, for outbounds (`to`) and inbounds (`from`, `rules`)",
    from_as_rules=True,
    apply_outbound=apply_outbound,
    apply_inbound=apply_inbound,
    initial=InitialPolicy("mesh-timeout-all", INITIAL_SPEC),
)
