"""Resources the control plane creates with a Mesh, as Kuma does: the Mesh `default` on start
(unless defaults.skipMeshCreation) and, with every new Mesh, the initial policies of its kinds
(`mesh-timeout-all-<mesh>`, ...) unless the Mesh lists them in `skipCreatingInitialPolicies`."""

from __future__ import annotations

from typing import Any

from control_plane.policies.registry import POLICY_TYPES
from control_plane.resources.common import DEFAULT_MESH
from control_plane.store.base import (
    ConflictError,
    ResourceKey,
    ResourceStore,
    StoredResource,
    Write,
    mesh_key,
)

ALL = "*"


def initial_policies(mesh: str, mesh_spec: dict[str, Any]) -> list[Write]:
    """The policies a new Mesh named `mesh` (with `mesh_spec`) starts with."""
    skipped = set(mesh_spec.get("skipCreatingInitialPolicies") or [])
    if ALL in skipped:
        return []
    return [
        Write(
            ResourceKey(t.kind, mesh, t.initial.name(mesh)),
            {"spec": dict(t.initial.spec)},
            expected_version=0,
        )
        for t in POLICY_TYPES
        if t.initial is not None and t.kind not in skipped
    ]


def create_mesh(store: ResourceStore, name: str, spec: dict[str, Any]) -> StoredResource:
    """Create Mesh `name` with its initial policies, in one transaction; ConflictError if it exists."""
    results = store.upsert_all(
        [Write(mesh_key(name), spec, expected_version=0), *initial_policies(name, spec)]
    )
    return results[0][0]


def ensure_default_mesh(store: ResourceStore) -> bool:
    """Create the Mesh `default` if absent; True if it was created now."""
    if store.get(mesh_key(DEFAULT_MESH)) is not None:
        return False
    try:
        create_mesh(store, DEFAULT_MESH, {})
    except ConflictError:  # someone created it meanwhile: keep theirs
        return False
    return True
