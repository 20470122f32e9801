"""Reading a mesh's policies from the store, for the generator and the rules inspector alike."""

from __future__ import annotations

import logging
import threading

from control_plane.policies.core.rules import MeshPolicies
from control_plane.policies.core.spec import PolicyResource
from control_plane.policies.registry import POLICY_TYPES
from control_plane.store.base import ResourceStore, StoredResource

log = logging.getLogger(__name__)

# Validated policies by stored identity (key, version, timestamps): a mesh change re-reads every
# policy of the mesh, and validating 200 unchanged ones again was ~10 % of a change's CPU at 1,000
# proxies. The models are only read downstream. Bounded: emptied when full.
_VALIDATED_LIMIT = 20_000
_validated: dict[tuple[object, ...], PolicyResource] = {}
_validated_lock = threading.Lock()


def load_mesh_policies(store: ResourceStore, mesh: str) -> MeshPolicies:
    """Every policy of `mesh`; one that no longer validates (written by an older version, or by
    hand into the database) is skipped with a warning: it must not take the mesh's config down."""
    policies: list[PolicyResource] = []
    for policy_type in POLICY_TYPES:
        stored, _ = store.list(policy_type.kind, mesh=mesh)
        for item in stored:
            try:
                policies.append(_validated_policy(policy_type.model, item))
            except ValueError as exc:
                log.warning("skipping invalid %s %s/%s: %s", policy_type.kind, mesh, item.key.name, exc)
    return mesh_policies(mesh, policies)


def _validated_policy(model: type[PolicyResource], item: StoredResource) -> PolicyResource:
    identity = (item.key, item.version, item.creation_time, item.modification_time)
    with _validated_lock:
        cached = _validated.get(identity)
    if cached is not None:
        return cached
    policy = model.model_validate(item.document())
    with _validated_lock:
        if len(_validated) >= _VALIDATED_LIMIT:
            _validated.clear()
        _validated[identity] = policy
    return policy


def mesh_policies(
    mesh: str, policies: list[PolicyResource] | tuple[PolicyResource, ...] = ()
) -> MeshPolicies:
    """The policies of `mesh` (validated resources of any registered kind), grouped by kind."""
    by_kind: dict[str, list[PolicyResource]] = {}
    for policy in policies:
        by_kind.setdefault(policy.type, []).append(policy)
    return MeshPolicies(mesh=mesh, types=POLICY_TYPES, by_kind=by_kind)
