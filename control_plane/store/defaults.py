"""Resources the control plane creates on start, as Kuma does (unless defaults.skipMeshCreation)."""

from __future__ import annotations

from control_plane.resources.common import DEFAULT_MESH
from control_plane.store.base import ConflictError, ResourceStore, mesh_key


def ensure_default_mesh(store: ResourceStore) -> bool:
    """Create the Mesh `default` if absent; True if it was created now."""
    key = mesh_key(DEFAULT_MESH)
    if store.get(key) is not None:
        return False
    try:
        # expected_version=0 ("must not exist"): if someone creates it meanwhile, keep theirs.
        store.upsert(key, {}, expected_version=0)
    except ConflictError:
        return False
    return True
