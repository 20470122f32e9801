"""MeshTrafficPermission: who may call the selected proxies (Kuma order 1100)."""

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.meshtrafficpermission.api import KIND, SECTIONS, MeshTrafficPermission
from control_plane.policies.meshtrafficpermission.plugin import apply_inbound

POLICY = PolicyType(
    kind=KIND,
    plural="meshtrafficpermissions",
    model=MeshTrafficPermission,
    sections=SECTIONS,
    order=1100,
    summary="which callers may reach a service (RBAC by SPIFFE identity); with mTLS on, none by default",
    apply_inbound=apply_inbound,
)
