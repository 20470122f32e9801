"""Pure generators: Dataplane + its mesh → Envoy listeners, clusters and load assignments."""

from control_plane.xds.generate.endpoints import EndpointIndex
from control_plane.xds.generate.permissions import MeshPolicies
from control_plane.xds.generate.snapshot import (
    MissingWorkdir,
    ProxyContext,
    Resources,
    SnapshotGenerator,
    generate_snapshot,
)

__all__ = [
    "EndpointIndex",
    "MeshPolicies",
    "MissingWorkdir",
    "ProxyContext",
    "Resources",
    "SnapshotGenerator",
    "generate_snapshot",
]
