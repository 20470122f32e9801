"""MeshHealthCheck: active health checks of the services a proxy calls (Kuma order 1200)."""

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.meshhealthcheck.api import KIND, SECTIONS, MeshHealthCheck
from control_plane.policies.meshhealthcheck.plugin import apply_outbound

POLICY = PolicyType(
    kind=KIND,
    plural="meshhealthchecks",
    model=MeshHealthCheck,
    sections=SECTIONS,
    order=1200,
    summary="active HTTP, TCP or gRPC health checks of the instances of the services called (`to`)",
    apply_outbound=apply_outbound,
)
