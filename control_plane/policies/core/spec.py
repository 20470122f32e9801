"""The shape every policy resource shares, built from what a policy declares about itself.

A policy brings its conf model (what goes under `default`) and says which of Kuma's sections it has
(`to`, `from`, `rules`, or a single top-level `default`) and which targetRef kinds each accepts;
`policy_model` turns that into the pydantic model of the whole resource:

```yaml
type: MeshTimeout
mesh: default
name: timeout-backend
spec:
  targetRef: {kind: Mesh}                      # which proxies (absent: the whole mesh)
  to:   [{targetRef: {kind: MeshService, name: backend}, default: {...}}]   # their outbounds
  from: [{targetRef: {kind: Mesh}, default: {...}}]                        # their inbounds (legacy)
  rules: [{matches: [{spiffeID: ...}], default: {...}}]                    # their inbounds
```
Confs keep only the fields a user set (every conf field is optional), so merging is Kuma's
merge-patch of what each policy says and defaults apply once, in the plugin, after the merge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from control_plane.policies.core.targetref import (
    DATAPLANE,
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    ORDER,
    TargetRef,
    mesh_target,
)
from control_plane.resources.common import SERVICE_TAG, MeshScopedResource, StrictModel

TOP_LEVEL_KINDS = (MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET)
TO_KINDS = (MESH, MESH_SERVICE)
SPIFFE_PREFIX = "spiffe://"


@dataclass(frozen=True)
class Sections:
    """Which parts of Kuma's spec a policy has, and the targetRef kinds each part accepts."""

    to: tuple[str, ...] = ()  # kinds accepted in `to[].targetRef`; empty: no `to`
    from_: tuple[str, ...] = ()  # kinds accepted in `from[].targetRef`; empty: no `from`
    rules: bool = False  # has `rules` (inbound)
    rule_matches: bool = False  # its `rules` may carry `matches` (per-caller confs)
    single_item: bool = False  # has a single top-level `default` instead of to/from/rules
    top: tuple[str, ...] = TOP_LEVEL_KINDS

    @property
    def inbound(self) -> bool:
        return bool(self.from_) or self.rules


class SpiffeIdMatch(StrictModel):
    type: Literal["Exact", "Prefix"]
    value: str

    @field_validator("value")
    @classmethod
    def _spiffe_id(cls, value: str) -> str:
        if not value.startswith(SPIFFE_PREFIX) or len(value) == len(SPIFFE_PREFIX):
            raise ValueError(f"{value!r} is not a SPIFFE ID (spiffe://<trust domain>/<path>)")
        return value


class Match(StrictModel):
    """Who a rule is for. Kuma also has `sni` matches, for zone proxies only: not here."""

    spiffeID: SpiffeIdMatch


def check_kind(value: str, kinds: tuple[str, ...], where: str) -> str:
    supported = ", ".join(kinds)
    if value not in ORDER:
        raise ValueError(f"unknown kind {value!r}; supported kinds: {supported}")
    if value not in kinds:
        raise ValueError(f"kind {value!r} is not supported {where}; supported kinds: {supported}")
    return value


@cache
def target_ref_model(kinds: tuple[str, ...], where: str) -> type[TargetRef]:
    """TargetRef accepting only `kinds` (`where` names the level in messages)."""

    def _kind(cls: type, value: str) -> str:
        return check_kind(value, kinds, where)

    return create_model(
        "TargetRef",
        __base__=TargetRef,
        __validators__={"_kind": field_validator("kind")(classmethod(_kind))},
    )


def field_value(model: BaseModel, name: str) -> Any:
    """`model.<name>` if its type declares that field, else None, without pydantic's slow
    __getattr__ for undeclared names (it builds an AttributeError: hot in per-change paths)."""
    return getattr(model, name) if name in type(model).model_fields else None


class PolicySpec(StrictModel):
    """The common part of every policy's spec; `policy_model` adds the sections a policy has."""

    targetRef: TargetRef = Field(default_factory=mesh_target)

    def entries(self, section: str) -> list[Any]:
        return list(field_value(self, section) or [])

    @model_validator(mode="after")
    def _sections_fit(self) -> PolicySpec:
        to, from_, rules = self.entries("to"), self.entries("from_"), self.entries("rules")
        single = field_value(self, "default")
        if rules and (to or from_):
            raise ValueError("rules: 'to' and 'from' must be empty when 'rules' is defined")
        if not (to or from_ or rules or single is not None):
            raise ValueError(f"at least one of {_section_names(self)} has to be defined")
        if self.targetRef.sectionName is not None and to:
            raise ValueError("targetRef.sectionName: selects an inbound; it cannot be used with 'to'")
        return self


def _section_names(spec: PolicySpec) -> str:
    names = [name for name in ("from", "to", "rules", "default") if name in _declared(type(spec))]
    return ", ".join(f"'{n}'" for n in names)


def _declared(spec_type: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in spec_type.model_fields.items()}


def callers_by_service(spec: Any) -> None:
    """`spec_check` of kinds that tell callers apart by the identity their certificate proves (a
    service, `spiffe://<mesh>/<service>`): a `from` group named by other tags could never match."""
    for index, entry in enumerate(spec.entries("from_")):
        other_tags = sorted(set(entry.targetRef.subset()) - {SERVICE_TAG})
        if other_tags:
            raise ValueError(
                f"from[{index}].targetRef.tags: callers can only be matched by their service "
                f"({SERVICE_TAG}): certificates prove the service, not {', '.join(other_tags)}"
            )


class PolicyResource(MeshScopedResource):
    """Base of every policy resource model (type/mesh/name/labels + spec)."""

    type: str
    spec: PolicySpec


def policy_model(
    kind: str,
    conf: type[BaseModel],
    sections: Sections,
    *,
    rule_conf: type[BaseModel] | None = None,
    from_conf: type[BaseModel] | None = None,
    to_entry: type[BaseModel] | None = None,
    spec_check: Callable[[Any], None] | None = None,
) -> type[PolicyResource]:
    """The resource model of policy `kind`: `conf` under every `default` unless `rule_conf`
    (rules) or `from_conf` (from) differ; `to_entry` replaces Kuma's usual `{targetRef, default}`
    for kinds whose `to` entries are shaped otherwise (routes: `{targetRef, rules}`; the entry's
    fields but `targetRef` are then what gets merged); `spec_check(spec)` raises ValueError for
    what only the policy can judge (its message starts with the offending field, e.g.
    "to[0].default: ...")."""
    fields: dict[str, Any] = {}
    top_ref = target_ref_model(sections.top, "as the top-level targetRef")
    fields["targetRef"] = (top_ref, Field(default_factory=lambda: top_ref(kind=MESH)))
    if sections.to:
        to_ref = target_ref_model(sections.to, "in 'to'")
        if to_entry is None:
            to_model = create_model("To", __base__=StrictModel, targetRef=(to_ref, ...), default=(conf, ...))
        else:  # the policy's own entry shape (MeshHTTPRoute: rules); its targetRef takes the kinds
            to_model = create_model("To", __base__=to_entry, targetRef=(to_ref, ...))
        fields["to"] = (list[to_model] | None, None)
    if sections.from_:
        from_ref = target_ref_model(sections.from_, "in 'from'")
        from_entry = create_model(
            "From", __base__=StrictModel, targetRef=(from_ref, ...), default=(from_conf or conf, ...)
        )
        fields["from_"] = (list[from_entry] | None, Field(None, alias="from"))
    if sections.rules:
        rule_fields: dict[str, Any] = {"default": (rule_conf or conf, ...)}
        if sections.rule_matches:
            rule_fields["matches"] = (list[Match] | None, None)
        rule_entry = create_model("Rule", __base__=StrictModel, **rule_fields)
        fields["rules"] = (list[rule_entry] | None, None)
    if sections.single_item:
        fields["default"] = (conf | None, None)
    validators = {}
    if spec_check is not None:

        def _policy_check(self: Any) -> Any:
            spec_check(self)
            return self

        validators["_policy_check"] = model_validator(mode="after")(_policy_check)
    spec = create_model(f"{kind}Spec", __base__=PolicySpec, __validators__=validators, **fields)
    return create_model(kind, __base__=PolicyResource, type=(Literal[kind], kind), spec=(spec, ...))
