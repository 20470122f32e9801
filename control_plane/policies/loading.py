"""Reading a mesh's policies from the store, for the generator and the rules inspector alike."""

from __future__ import annotations

import logging

from control_plane.policies.core.rules import MeshPolicies
from control_plane.policies.core.spec import PolicyResource
from control_plane.policies.registry import POLICY_TYPES
from control_plane.store.base import ResourceStore

log = logging.getLogger(__name__)


def load_mesh_policies(store: ResourceStore, mesh: str) -> MeshPolicies:
    """Every policy of `mesh`; one that no longer validates (written by an older version, or by
    hand into the database) is skipped with a warning: it must not take the mesh's config down."""
    policies: list[PolicyResource] = []
    for policy_type in POLICY_TYPES:
        stored, _ = store.list(policy_type.kind, mesh=mesh)
        for item in stored:
            try:
                policies.append(policy_type.model.model_validate(item.document()))
            except ValueError as exc:
                log.warning("skipping invalid %s %s/%s: %s", policy_type.kind, mesh, item.key.name, exc)
    return mesh_policies(mesh, policies)


def mesh_policies(
    mesh: str, policies: list[PolicyResource] | tuple[PolicyResource, ...] = ()
) -> MeshPolicies:
    """The policies of `mesh` (validated resources of any registered kind), grouped by kind."""
    by_kind: dict[str, list[PolicyResource]] = {}
    for policy in policies:
        by_kind.setdefault(policy.type, []).append(policy)
    return MeshPolicies(mesh=mesh, types=POLICY_TYPES, by_kind=by_kind)
