"""MeshTLS: Strict or Permissive per inbound, and the mesh's TLS versions and ciphers (Kuma order 300)."""

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.meshtls.api import KIND, SECTIONS, MeshTLS
from control_plane.policies.meshtls.plugin import apply_inbound

POLICY = PolicyType(
    kind=KIND,
    plural="meshtlses",
    model=MeshTLS,
    sections=SECTIONS,
    order=300,
    summary="with the Mesh's mTLS on: Strict or Permissive per inbound, and the TLS versions and "
    "ciphers of every mTLS connection (`tlsVersion`, `tlsCiphers`: top-level Mesh only)",
    from_as_rules=True,
    apply_inbound=apply_inbound,
)
