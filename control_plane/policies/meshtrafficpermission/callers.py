"""The legacy `from` form: an action per caller, merged as Kuma merges `from` entries.

Entries come in merge order (policies by rank, the smallest name last; each policy's entries as
written). For a caller, the last entry covering it decides: a `Mesh` entry covers everyone, a
service entry that service. Once any entry applies to an inbound, callers none covers are denied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from control_plane.policies.core.rules import FromEntry
from control_plane.policies.meshtrafficpermission.api import (
    ALLOW,
    ALLOW_WITH_SHADOW_DENY,
    DENY,
    caller_service,
)

ALLOWING = frozenset({ALLOW, ALLOW_WITH_SHADOW_DENY})


@dataclass(frozen=True)
class CallerActions:
    """The action for every caller: `by_service` for the services some entry names, `others` for
    every other identity of the mesh."""

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


def caller_actions(entries: Iterable[FromEntry]) -> CallerActions:
    others = DENY
    by_service: dict[str, str] = {}
    for entry in entries:
        action = str(entry.conf["action"])
        service = caller_service(entry.target)
        if service is not None:
            by_service[service] = action
        else:  # every caller, those named so far included, until a later entry says otherwise
            others = action
            by_service = dict.fromkeys(by_service, action)
    return CallerActions(others=others, by_service=dict(sorted(by_service.items())))
