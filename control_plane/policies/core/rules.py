"""Which policies apply to a proxy and what they add up to: Kuma's matching, ordering and merging.

For one proxy and one policy kind:
- the policies whose top-level targetRef selects the proxy, ordered by that targetRef's
  specificity (Mesh < Dataplane < MeshSubset < MeshService < MeshServiceSubset; a Dataplane by name
  beats one by labels, one with a sectionName beats one without), then by name with the
  lexicographically SMALLER name winning (it is merged last);
- `to`: per outbound service, the entries naming it (MeshService) or everything (Mesh), ordered by
  the policy's rank then the entry's kind (Kuma's `outbound.Sort`), merged as JSON merge-patch;
- `from` (legacy) kept as ordered entries for the plugin (MeshTrafficPermission decides per caller);
  for `from_as_rules` kinds they become rules without matches;
- `rules` per inbound: one rule per match (or one catch-all), matched rules first (Exact before
  Prefix); `catch_all()` merges the rules without matches.
Results for proxies that select the same policies are the same objects: computed once per mesh
view, and the outbound part is what the mesh-wide shared config is keyed by.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from control_plane.policies.core.merge import merge_confs
from control_plane.policies.core.parts import ProxyInfo
from control_plane.policies.core.spec import Match, PolicyResource, field_value
from control_plane.policies.core.targetref import DATAPLANE, MESH, MESH_SERVICE, ORDER, SIDECAR, TargetRef
from control_plane.resources.dataplane import Dataplane, Inbound

if TYPE_CHECKING:
    from control_plane.policies.core.plugin import PolicyType


@dataclass(frozen=True)
class Origin:
    """Which policy (and which of its entries) contributed to a conf."""

    kind: str
    mesh: str
    name: str
    rule_index: int = 0

    def document(self) -> dict[str, Any]:
        return {"type": self.kind, "mesh": self.mesh, "name": self.name}


@dataclass(frozen=True)
class MergedConf:
    conf: Mapping[str, Any]  # the merge-patched `default`s (JSON), lowest priority first
    origins: tuple[Origin, ...]

    def parsed(self, model: type[BaseModel]) -> Any:
        """`conf` as the policy's model, parsed once (MergedConfs are shared between proxies)."""
        cached = self.__dict__.get("_parsed")
        if cached is None or type(cached) is not model:
            cached = model.model_validate(self.conf)
            object.__setattr__(self, "_parsed", cached)
        return cached


Merge = Callable[[Iterable[Mapping[str, Any]]], dict[str, Any]]  # confs, lowest priority first


def merged(
    entries: Sequence[tuple[Mapping[str, Any], Origin]], merge: Merge = merge_confs
) -> MergedConf | None:
    """The merge of the entries' confs (Kuma's merge-patch, or the policy's own `merge`)."""
    if not entries:
        return None
    return MergedConf(merge(conf for conf, _ in entries), tuple(origin for _, origin in entries))


@dataclass(frozen=True)
class FromEntry:
    target: TargetRef
    conf: Mapping[str, Any]
    origin: Origin


@dataclass(frozen=True)
class InboundRule:
    match: Match | None  # None: all incoming traffic
    conf: Mapping[str, Any]
    origin: Origin


@dataclass(frozen=True)
class InboundPolicy:
    """What one kind says about one inbound: legacy `from` entries (in merge order) and `rules`."""

    from_entries: tuple[FromEntry, ...] = ()
    rules: tuple[InboundRule, ...] = ()
    merge: Merge = merge_confs

    def __bool__(self) -> bool:
        return bool(self.from_entries or self.rules)

    @cached_property
    def catch_all(self) -> MergedConf | None:
        """Kuma's `MatchesAllIncomingTraffic`: the merge of the rules without matches."""
        return merged([(r.conf, r.origin) for r in self.rules if r.match is None], self.merge)


EMPTY_INBOUND = InboundPolicy()


@dataclass(frozen=True)
class OutboundPolicy:
    """What one kind says about a proxy's outbounds: a conf per service it names, and the conf of
    every other service (from `to` entries of kind Mesh)."""

    others: MergedConf | None
    by_service: Mapping[str, MergedConf]

    def for_service(self, service: str) -> MergedConf | None:
        return self.by_service.get(service, self.others)

    def confs(self) -> list[MergedConf]:
        """Every conf it holds (each service's and the others')."""
        return [*([self.others] if self.others is not None else []), *self.by_service.values()]


@dataclass(frozen=True)
class OutboundRules:
    """Every kind's outbound policy for proxies selecting the same policies; `key` names that set.
    Single-item kinds that shape outbounds are in it too (their merged `default` for every
    service). `caller`: the calling service, set only when such a conf depends on who calls (a
    tracer's service name); then only that service's proxies share the build."""

    key: tuple[tuple[str, str], ...]
    by_kind: Mapping[str, OutboundPolicy]
    caller: str = ""
    # Set (and part of `key`) when a conf present depends on the proxy itself (`outbound_per_proxy`).
    proxy: ProxyInfo | None = None
    _names_proxy: dict[int, bool] = field(default_factory=dict, compare=False, repr=False)

    def for_proxy(
        self, proxy: ProxyInfo, per_proxy: Mapping[str, Callable[[MergedConf], bool]]
    ) -> OutboundRules:
        """These rules for one proxy: unchanged (shared) unless a conf present uses who the proxy is
        (`per_proxy`: a kind's test of its confs); then a copy whose key names the proxy, so no
        other proxy shares its build. The test runs once per set of rules, not once per proxy."""
        names_proxy = self._names_proxy.get(id(per_proxy))
        if names_proxy is None:
            names_proxy = any(
                names(conf)
                for kind, names in per_proxy.items()
                if (policy := self.by_kind.get(kind)) is not None
                for conf in policy.confs()
            )
            self._names_proxy[id(per_proxy)] = names_proxy
        if not names_proxy:
            return self
        return replace(self, key=(*self.key, ("proxy", repr(proxy))), proxy=proxy, _names_proxy={})

    def conf(self, kind: str, service: str) -> MergedConf | None:
        policy = self.by_kind.get(kind)
        return policy.for_service(service) if policy is not None else None


NO_OUTBOUND_RULES = OutboundRules((), {})


def policy_rank(policy: PolicyResource) -> tuple[int, int, int]:
    """How specific a policy's top-level targetRef is (higher: merged later, so it wins)."""
    ref = policy.spec.targetRef
    by_name = int(ref.kind == DATAPLANE and ref.name is not None)
    with_section = int(ref.kind == DATAPLANE and ref.sectionName is not None)
    return ORDER[ref.kind], by_name, with_section


def sort_policies(policies: Iterable[PolicyResource]) -> list[PolicyResource]:
    """Lowest priority first: by rank, then the greater name first (the smallest name wins)."""
    by_name = sorted(policies, key=operator.attrgetter("name"), reverse=True)
    return sorted(by_name, key=policy_rank)  # stable: equal ranks keep the name order


def origin_of(policy: PolicyResource, index: int = 0) -> Origin:
    return Origin(policy.type, policy.mesh, policy.name, index)


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True, by_alias=True)


def _entry_conf(entry: BaseModel) -> dict[str, Any]:
    """What a `to` entry contributes to a merge: its `default`, or (kinds with their own entry
    shape) every field but the targetRef."""
    default = field_value(entry, "default")
    if isinstance(default, BaseModel):
        return _dump(default)
    return {k: v for k, v in _dump(entry).items() if k != "targetRef"}


def outbound_policy(policies: Sequence[PolicyResource], merge: Merge = merge_confs) -> OutboundPolicy | None:
    """`policies` (already sorted, all selecting the proxy) → per-service confs of their `to`."""
    entries = []
    for position, policy in enumerate(policies):  # `position` orders equal ranks by name
        for index, entry in enumerate(policy.spec.entries("to")):
            key = (policy_rank(policy), ORDER[entry.targetRef.kind], position, index)
            entries.append((key, entry, origin_of(policy, index)))
    if not entries:
        return None
    # Kuma's outbound.Sort: the policy's rank, then the entry's kind (a MeshService entry beats a
    # Mesh one whatever the names), then the name.
    entries.sort(key=operator.itemgetter(0))
    mesh_wide = [(_entry_conf(e), o) for _, e, o in entries if e.targetRef.kind == MESH]
    named = sorted({e.targetRef.name for _, e, _o in entries if e.targetRef.kind == MESH_SERVICE})
    by_service = {
        service: merged(
            [
                (_entry_conf(e), o)
                for _, e, o in entries
                if e.targetRef.kind == MESH or e.targetRef.name == service
            ],
            merge,
        )
        for service in named
    }
    return OutboundPolicy(merged(mesh_wide, merge), {s: c for s, c in by_service.items() if c is not None})


def inbound_policy(policy_type: PolicyType, policies: Sequence[PolicyResource]) -> InboundPolicy:
    """`policies` (sorted, all selecting the inbound) → its `from` entries and rules."""
    from_entries: list[FromEntry] = []
    rules: list[InboundRule] = []
    for policy in policies:
        if policy.spec.entries("rules"):
            for index, rule in enumerate(policy.spec.entries("rules")):
                origin, conf = origin_of(policy, index), _dump(rule.default)
                matches = field_value(rule, "matches") or [None]
                rules.extend(InboundRule(m, conf, origin) for m in matches)
        for index, entry in enumerate(policy.spec.entries("from_")):
            origin, conf = origin_of(policy, index), _dump(entry.default)
            if policy_type.from_as_rules:
                rules.append(InboundRule(None, conf, origin))
            else:
                from_entries.append(FromEntry(entry.targetRef, conf, origin))
    rules.sort(key=_match_rank)  # stable: Exact matches, Prefix matches, then all traffic
    return InboundPolicy(tuple(from_entries), tuple(rules), policy_type.merge or merge_confs)


def _match_rank(rule: InboundRule) -> int:
    if rule.match is None:
        return 2
    return 0 if rule.match.spiffeID.type == "Exact" else 1


def _selects_every_proxy(policy: PolicyResource) -> bool:
    ref = policy.spec.targetRef  # every proxy here is a sidecar
    return ref.kind == MESH and (ref.proxyTypes is None or SIDECAR in ref.proxyTypes)


@dataclass
class _KindIndex:
    """One kind's policies with a section, sorted, split into those selecting every proxy (the
    common case: decided once) and the others (checked per proxy)."""

    ordered: list[PolicyResource]
    conditional: list[int]  # indices into `ordered` of policies that select only some proxies

    @classmethod
    def of(cls, policies: Iterable[PolicyResource]) -> _KindIndex:
        ordered = sort_policies(policies)
        return cls(ordered, [i for i, p in enumerate(ordered) if not _selects_every_proxy(p)])

    def selecting(self, dataplane: Dataplane) -> list[PolicyResource]:
        if not self.conditional:
            return self.ordered
        skip = {i for i in self.conditional if not self.ordered[i].spec.targetRef.selects_proxy(dataplane)}
        return [p for i, p in enumerate(self.ordered) if i not in skip]


@dataclass
class MeshPolicies:
    """The policies of one mesh, read once per mesh change and shared by all its proxies, with
    the result for each distinct set of matched policies computed once."""

    mesh: str = ""
    types: Sequence[PolicyType] = ()
    by_kind: Mapping[str, Sequence[PolicyResource]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_kind = {kind: sort_policies(policies) for kind, policies in self.by_kind.items()}
        self._to = {
            t.kind: _KindIndex.of(p for p in self.of_kind(t.kind) if p.spec.entries("to"))
            for t in self.types
            if t.sections.to
        }
        self._inbound = {
            t.kind: _KindIndex.of(
                p for p in self.of_kind(t.kind) if p.spec.entries("from_") or p.spec.entries("rules")
            )
            for t in self.types
            if t.sections.inbound
        }
        self._single = {
            t.kind: _KindIndex.of(
                p for p in self.of_kind(t.kind) if field_value(p.spec, "default") is not None
            )
            for t in self.types
            if t.sections.single_item
        }
        self._merges = {t.kind: t.merge for t in self.types if t.merge is not None}
        # Single-item kinds whose merged `default` shapes every outbound: part of the outbound key.
        self._default_out = {
            t.kind: self._single[t.kind]
            for t in self.types
            if t.sections.single_item and t.apply_outbound is not None and self._single[t.kind].ordered
        }
        self._per_caller = {t.kind: t.outbound_per_caller for t in self.types if t.outbound_per_caller}
        self._proxy_cache: dict[tuple[str, tuple[str, ...]], MergedConf | None] = {}
        self._outbound_cache: dict[tuple[tuple[str, str], ...], OutboundRules] = {}
        self._to_for_all: OutboundRules | None = None
        if self._same_outbounds_for_all():
            self._to_for_all = self._outbound_rules_of(
                {k: i.ordered for k, i in self._to.items()},
                {k: i.ordered for k, i in self._default_out.items()},
            )
        self._inbound_cache: dict[tuple[str, tuple[str, ...]], InboundPolicy] = {}

    def _same_outbounds_for_all(self) -> bool:
        """Every outbound-shaping policy selects every proxy, and none depends on the caller."""
        indexes = [*self._to.values(), *self._default_out.values()]
        if any(index.conditional for index in indexes):
            return False
        return not any(
            self._per_caller[kind](conf)
            for kind, index in self._default_out.items()
            if kind in self._per_caller and (conf := self._merged_default(kind, index.ordered)) is not None
        )

    def of_kind(self, kind: str) -> Sequence[PolicyResource]:
        return self.by_kind.get(kind, ())

    @property
    def inbound_types(self) -> list[PolicyType]:
        return [t for t in self.types if t.sections.inbound]

    def outbound_rules(self, dataplane: Dataplane) -> OutboundRules:
        """The outbound confs of `dataplane` (its `to` policies', and the `default` of single-item
        kinds that shape outbounds): one object for every proxy selecting the same policies."""
        if self._to_for_all is not None:  # every such policy selects every proxy: one answer
            return self._to_for_all
        selected = {kind: index.selecting(dataplane) for kind, index in self._to.items()}
        defaults = {kind: index.selecting(dataplane) for kind, index in self._default_out.items()}
        return self._outbound_rules_of(selected, defaults, self._caller_of(dataplane, defaults))

    def _caller_of(self, dataplane: Dataplane, defaults: Mapping[str, Sequence[PolicyResource]]) -> str:
        """The proxy's service when a single-item conf for its outbounds depends on the caller."""
        for kind, policies in defaults.items():
            check = self._per_caller.get(kind)
            conf = self._merged_default(kind, policies) if check is not None else None
            if check is not None and conf is not None and check(conf):
                return caller_service(dataplane)
        return ""

    def _outbound_rules_of(
        self,
        selected: Mapping[str, Sequence[PolicyResource]],
        defaults: Mapping[str, Sequence[PolicyResource]],
        caller: str = "",
    ) -> OutboundRules:
        key = tuple(
            (kind, p.name)
            for named in (selected, defaults)
            for kind, policies in named.items()
            for p in policies
        )
        key += (("caller", caller),) if caller else ()
        found = self._outbound_cache.get(key)
        if found is None:
            by_kind = {
                kind: outbound_policy(policies, self._merges.get(kind, merge_confs))
                for kind, policies in selected.items()
            }
            for kind, policies in defaults.items():  # a single-item default: every service's conf
                conf = self._merged_default(kind, policies)
                by_kind[kind] = OutboundPolicy(conf, {}) if conf is not None else None
            found = OutboundRules(key, {k: v for k, v in by_kind.items() if v is not None}, caller)
            self._outbound_cache[key] = found
        return found

    def proxy_conf(self, policy_type: PolicyType, dataplane: Dataplane) -> MergedConf | None:
        """A single-item kind's merged top-level `default` for the proxy (None: no policy)."""
        index = self._single.get(policy_type.kind)
        if index is None:
            return None
        return self._merged_default(policy_type.kind, index.selecting(dataplane))

    def _merged_default(self, kind: str, policies: Sequence[PolicyResource]) -> MergedConf | None:
        """The merge of `policies`' top-level defaults: one object per set of policies."""
        key = (kind, tuple(p.name for p in policies))
        if key not in self._proxy_cache:
            entries = [(_dump(p.spec.default), origin_of(p)) for p in policies]
            self._proxy_cache[key] = merged(entries, self._merges.get(kind, merge_confs))
        return self._proxy_cache[key]

    def inbound_policy(
        self, policy_type: PolicyType, dataplane: Dataplane, inbound: Inbound
    ) -> InboundPolicy:
        """What `policy_type` says about traffic into `inbound` (EMPTY_INBOUND: nothing)."""
        if policy_type.sections.single_item:
            return self._default_inbound(policy_type, dataplane, inbound)
        index = self._inbound.get(policy_type.kind)
        if index is None or not index.ordered:
            return EMPTY_INBOUND
        selected = [p for p in index.ordered if p.spec.targetRef.selects_inbound(dataplane, inbound)]
        key = (policy_type.kind, tuple(p.name for p in selected))
        found = self._inbound_cache.get(key)
        if found is None:
            found = self._inbound_cache[key] = (
                inbound_policy(policy_type, selected) if selected else EMPTY_INBOUND
            )
        return found

    def _default_inbound(
        self, policy_type: PolicyType, dataplane: Dataplane, inbound: Inbound
    ) -> InboundPolicy:
        """A single-item kind's `default`s for one inbound, as rules for all callers (merged:
        `catch_all`): the policies selecting the proxy, but a Dataplane one whose `sectionName`
        names another inbound (as Kuma's listener-scoped single-item rules)."""
        index = self._single.get(policy_type.kind)
        if index is None or not index.ordered:
            return EMPTY_INBOUND
        selected = [
            p
            for p in index.selecting(dataplane)
            if p.spec.targetRef.kind != DATAPLANE or p.spec.targetRef.selects_inbound(dataplane, inbound)
        ]
        key = (policy_type.kind, tuple(p.name for p in selected))
        found = self._inbound_cache.get(key)
        if found is None:
            rules = tuple(InboundRule(None, _dump(p.spec.default), origin_of(p)) for p in selected)
            found = self._inbound_cache[key] = InboundPolicy((), rules, policy_type.merge or merge_confs)
        return found


def caller_service(dataplane: Dataplane) -> str:
    """The service a proxy calls as (Kuma's identifying name): its first inbound's."""
    inbounds = dataplane.networking.inbound
    return inbounds[0].service if inbounds else dataplane.name
