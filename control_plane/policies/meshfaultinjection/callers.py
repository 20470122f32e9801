"""Which faults each caller of an inbound gets: the `from` entries or `rules` turned into groups of
callers, each with the conf merged for it, most specific group first.

A caller belongs to the first group whose identity match it passes; the last group (no match) is
every caller no other group took, and callers nobody can identify (plaintext, no mTLS).
- `from` (used when no `rules` apply, as Kuma): a group per service an entry names, merging the
  entries covering it in order (Mesh entries and its own), then the Mesh entries' merge for the rest;
- `rules`: a group per distinct `matches` entry (Exact before Prefix, longer prefixes first), merging
  the rules without matches, then the matched rules that cover it, least specific first; then the
  rules without matches for the rest. (Kuma's rules API adds up every rule a caller matches, each
  as its own filters; merging lets a more specific rule replace or, with `http: []`, remove faults,
  as the merge of every other conf does.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from control_plane.policies.core.rules import (
    FromEntry,
    InboundPolicy,
    InboundRule,
    MergedConf,
    Origin,
    merged,
)
from control_plane.policies.core.spec import Match, SpiffeIdMatch
from control_plane.resources.common import SERVICE_TAG
from kuma_common.dp_contract import spiffe_id


@dataclass(frozen=True)
class CallerGroup:
    callers: SpiffeIdMatch | None  # None: every caller no earlier group took
    conf: MergedConf


def caller_groups(policy: InboundPolicy, mesh: str) -> list[CallerGroup]:
    if policy.rules:
        return _rule_groups(policy.rules)
    return _from_groups(policy.from_entries, mesh)


def _from_groups(entries: Sequence[FromEntry], mesh: str) -> list[CallerGroup]:
    def service(entry: FromEntry) -> str | None:
        return entry.target.subset().get(SERVICE_TAG)

    groups = []
    for name in sorted({s for s in map(service, entries) if s is not None}):
        covering = merged([(e.conf, e.origin) for e in entries if service(e) in (None, name)])
        assert covering is not None
        groups.append(CallerGroup(SpiffeIdMatch(type="Exact", value=spiffe_id(mesh, name)), covering))
    return _with_rest(groups, [(e.conf, e.origin) for e in entries if service(e) is None])


def _rule_groups(rules: Sequence[InboundRule]) -> list[CallerGroup]:
    everyone = [(r.conf, r.origin) for r in rules if r.match is None]
    matched = sorted((r for r in rules if r.match is not None), key=lambda r: _specificity(r.match))
    distinct: dict[tuple[str, str], SpiffeIdMatch] = {}
    for rule in reversed(matched):  # most specific first
        assert rule.match is not None
        distinct.setdefault((rule.match.spiffeID.type, rule.match.spiffeID.value), rule.match.spiffeID)
    groups = []
    for callers in distinct.values():
        covering = [(r.conf, r.origin) for r in matched if r.match is not None and _covers(r.match, callers)]
        conf = merged(everyone + covering)
        assert conf is not None
        groups.append(CallerGroup(callers, conf))
    return _with_rest(groups, everyone)


def _with_rest(
    groups: list[CallerGroup], rest: Sequence[tuple[Mapping[str, Any], Origin]]
) -> list[CallerGroup]:
    conf = merged(rest)
    return [*groups, CallerGroup(None, conf)] if conf is not None else groups


def _specificity(match: Match | None) -> tuple[int, int]:
    """Ascending: shorter prefixes, longer prefixes, exact identities."""
    assert match is not None
    spiffe = match.spiffeID
    return (1, 0) if spiffe.type == "Exact" else (0, len(spiffe.value))


def _covers(match: Match, callers: SpiffeIdMatch) -> bool:
    """Whether every caller of `callers` passes `match`."""
    spiffe = match.spiffeID
    if spiffe.type == "Exact":
        return callers.type == "Exact" and callers.value == spiffe.value
    return callers.value.startswith(spiffe.value)
