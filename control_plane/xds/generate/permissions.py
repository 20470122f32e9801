"""Which callers may reach a service: MeshTrafficPermissions merged the way Kuma merges `from` rules.

For a protected service, every policy whose top-level targetRef selects it contributes its `from`
entries. Entries are ordered by the policy's targetRef specificity (Mesh before MeshService), then
by policy name, then by the entry's own targetRef specificity; for each caller the last entry that
selects it decides. So a MeshService-targeted policy overrides a Mesh-wide one, a later name
overrides an earlier one of the same kind, and inside one policy `MeshService web` overrides `Mesh`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from control_plane.resources.meshtrafficpermission import (
    ALLOW,
    ALLOW_WITH_SHADOW_DENY,
    DENY,
    MESH_SERVICE_KIND,
    From,
    MeshTrafficPermission,
)

ALLOWING = frozenset({ALLOW, ALLOW_WITH_SHADOW_DENY})


@dataclass(frozen=True)
class MeshPolicies:
    """The policies of one mesh the generator applies (read once per mesh, shared by its proxies)."""

    traffic_permissions: Sequence[MeshTrafficPermission] = ()


@dataclass(frozen=True)
class CallerActions:
    """The action for every caller: `by_service` for the services named in some rule, `others`
    for every other identity of the mesh."""

    others: str
    by_service: Mapping[str, str]

    def action(self, caller: str) -> str:
        return self.by_service.get(caller, self.others)

    def callers_with(self, actions: frozenset[str]) -> tuple[bool, list[str]]:
        """(do unnamed callers get one of `actions`, the named callers that differ from them)."""
        others_in = self.others in actions
        differing = sorted(s for s, a in self.by_service.items() if (a in actions) != others_in)
        return others_in, differing

    @property
    def shadow_denies_anyone(self) -> bool:
        return ALLOW_WITH_SHADOW_DENY in (self.others, *self.by_service.values())


def _ordered_entries(policies: Iterable[MeshTrafficPermission], service: str) -> list[From]:
    selected = sorted(
        (p for p in policies if p.spec.targetRef.selects(service)),
        key=lambda p: (p.spec.targetRef.specificity, p.name),
    )
    entries: list[From] = []
    for policy in selected:
        # sorted() is stable: entries of equal specificity keep their order in the policy.
        entries.extend(sorted(policy.spec.from_, key=lambda e: e.targetRef.specificity))
    return entries


def caller_actions(policies: Iterable[MeshTrafficPermission], service: str) -> CallerActions | None:
    """The merged rules protecting `service`; None when no policy selects it (Kuma: allow all).

    Once a policy selects the service, a caller no entry selects is denied, as in Kuma (its RBAC
    allows only the principals of Allow rules)."""
    entries = _ordered_entries(policies, service)
    if not entries:
        return None
    others = DENY
    by_service: dict[str, str] = {}
    for entry in entries:
        action = entry.default.action
        if entry.targetRef.kind == MESH_SERVICE_KIND:
            by_service[str(entry.targetRef.name)] = action
        else:  # Mesh: every caller, those named so far included, until a later entry says otherwise
            others = action
            by_service = dict.fromkeys(by_service, action)
    return CallerActions(others=others, by_service=dict(sorted(by_service.items())))
