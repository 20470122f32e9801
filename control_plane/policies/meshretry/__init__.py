"""MeshRetry: retries of outbound calls, for TCP connects, HTTP and gRPC requests (Kuma order 1400)."""

from control_plane.policies.core.plugin import InitialPolicy, PolicyType
from control_plane.policies.meshretry.api import INITIAL_SPEC, KIND, SECTIONS, MeshRetry
from control_plane.policies.meshretry.plugin import apply_outbound

POLICY = PolicyType(
    kind=KIND,
    plural="meshretries",
    model=MeshRetry,
    sections=SECTIONS,
    order=1400,
    summary="retries of outbound calls: TCP connect attempts, HTTP and gRPC retry policies (`to`)",
    apply_outbound=apply_outbound,
    initial=InitialPolicy("mesh-retry-all", INITIAL_SPEC),
)
