"""MeshTCPRoute: where a service's TCP connections go, split by weight (Kuma order 200)."""

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.meshtcproute.api import KIND, SECTIONS, MeshTCPRoute
from control_plane.policies.meshtcproute.plugin import apply_outbound

POLICY = PolicyType(
    kind=KIND,
    plural="meshtcproutes",
    model=MeshTCPRoute,
    sections=SECTIONS,
    order=200,
    summary="TCP routes of outbounds (`to`): another service, a subset, or a weighted split",
    apply_outbound=apply_outbound,
)
