"""MeshTrafficPermission → Envoy RBAC on the mTLS chains of each inbound, by caller identity.

As Kuma: HTTP inbounds get the HTTP RBAC filter (a denied request is answered 403 `RBAC: access
denied`; allowed requests on the same connection keep working), TCP inbounds the network RBAC
filter (a denied connection is closed). Without mTLS nothing is enforced (callers are unknown).
Zero trust: with mTLS on, an inbound no policy speaks for denies everyone.
- `rules` form (Kuma's RBACConfigurer): allowed = (allow ∪ allowWithShadowDeny) minus deny; a deny
  wins over any allow, whichever policy says it. Shadow rules deny the allowWithShadowDeny callers,
  which only counts them (`rbac.shadow_denied`).
- `from` form (used only when the inbound has no `rules`): per caller, the last covering entry.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.matcher.v3 import string_pb2

from control_plane.policies.core.parts import ChainParts, InboundParts
from control_plane.policies.core.rules import InboundPolicy, InboundRule
from control_plane.policies.core.spec import Match
from control_plane.policies.meshtrafficpermission.api import ALLOW_WITH_SHADOW_DENY
from control_plane.policies.meshtrafficpermission.callers import ALLOWING, CallerActions, caller_actions
from control_plane.xds.generate.pack import network_filter, pack
from kuma_common.dp_contract import spiffe_id

NETWORK_RBAC_FILTER = "envoy.filters.network.rbac"
HTTP_RBAC_FILTER = "envoy.filters.http.rbac"
POLICY_NAME = "MeshTrafficPermission"
SHADOW_DENYING = frozenset({ALLOW_WITH_SHADOW_DENY})
Rules = tuple[rbac_pb2.RBAC, rbac_pb2.RBAC | None]  # (enforced, shadow or None)


def apply_inbound(policy: InboundPolicy, parts: InboundParts) -> None:
    if not parts.mtls:
        return
    if policy.rules:
        rules = rules_form(policy.rules)
    elif policy.from_entries:
        rules = from_form(caller_actions(policy.from_entries), parts.mesh)
    else:
        rules = (_rbac(rbac_pb2.RBAC.ALLOW, []), None)  # zero trust: nobody
    for chain in parts.chains:
        if chain.secure:
            _enforce(chain, rules)


# --- the `rules` form ----------------------------------------------------------------------------
def rules_form(rules: Iterable[InboundRule]) -> Rules:
    allow: list[Match] = []
    deny: list[Match] = []
    shadow: list[Match] = []
    for rule in rules:
        allow += _matches(rule, "allow") + _matches(rule, "allowWithShadowDeny")
        deny += _matches(rule, "deny")
        shadow += _matches(rule, "allowWithShadowDeny")
    allowed = _any_of([_principal(m) for m in allow])
    if allowed is not None and deny:
        denied = _any_of([_principal(m) for m in deny])
        allowed = rbac_pb2.Principal(
            and_ids=rbac_pb2.Principal.Set(ids=[allowed, rbac_pb2.Principal(not_id=denied)])
        )
    enforced = _rbac(rbac_pb2.RBAC.ALLOW, [allowed] if allowed is not None else [])
    shadowed = _any_of([_principal(m) for m in shadow])
    return enforced, _rbac(rbac_pb2.RBAC.DENY, [shadowed]) if shadowed is not None else None


def _matches(rule: InboundRule, field: str) -> list[Match]:
    return [Match.model_validate(m) for m in rule.conf.get(field) or []]


def _principal(match: Match) -> rbac_pb2.Principal:
    spiffe = match.spiffeID
    matcher = (
        string_pb2.StringMatcher(exact=spiffe.value)
        if spiffe.type == "Exact"
        else string_pb2.StringMatcher(prefix=spiffe.value)
    )
    return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated(principal_name=matcher))


def _any_of(principals: list[rbac_pb2.Principal]) -> rbac_pb2.Principal | None:
    if not principals:
        return None
    if len(principals) == 1:
        return principals[0]
    return rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=principals))


# --- the legacy `from` form --------------------------------------------------------------------
def from_form(actions: CallerActions, mesh: str) -> Rules:
    enforced = _rbac(rbac_pb2.RBAC.ALLOW, _principals(actions, ALLOWING, mesh))
    shadow = None
    if actions.shadow_denies_anyone:
        shadow = _rbac(rbac_pb2.RBAC.DENY, _principals(actions, SHADOW_DENYING, mesh))
    return enforced, shadow


def _identity(mesh: str, service: str) -> rbac_pb2.Principal:
    matcher = string_pb2.StringMatcher(exact=spiffe_id(mesh, service))
    return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated(principal_name=matcher))


def _principals(actions: CallerActions, wanted: frozenset[str], mesh: str) -> list[rbac_pb2.Principal]:
    """Principals matching exactly the callers whose action is one of `wanted`."""
    others_in, differing = actions.callers_with(wanted)
    ids = [_identity(mesh, service) for service in differing]
    if not others_in:
        return ids
    if not ids:
        return [rbac_pb2.Principal(any=True)]
    return [rbac_pb2.Principal(not_id=rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=ids)))]


# --- filters ---------------------------------------------------------------------------------------
def _rbac(action: rbac_pb2.RBAC.Action, principals: list[rbac_pb2.Principal]) -> rbac_pb2.RBAC:
    rules = rbac_pb2.RBAC(action=action)
    if principals:  # ALLOW without any policy denies everyone, as wanted
        rules.policies[POLICY_NAME].CopyFrom(
            rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=principals)
        )
    return rules


def _enforce(chain: ChainParts, rules: Rules) -> None:
    enforced, shadow = rules
    if chain.hcm is not None:
        config = http_rbac_pb2.RBAC(rules=enforced)
        if shadow is not None:
            config.shadow_rules.CopyFrom(shadow)
        chain.hcm.http_filters.insert(0, hcm.HttpFilter(name=HTTP_RBAC_FILTER, typed_config=pack(config)))
        return
    # The trailing dot makes the stats `<stats>.rbac.allowed`, not `<stats>rbac.allowed` (as Kuma).
    config = network_rbac_pb2.RBAC(stat_prefix=f"{chain.stat_prefix}.", rules=enforced)
    if shadow is not None:
        config.shadow_rules.CopyFrom(shadow)
    chain.network_filters.insert(0, network_filter(NETWORK_RBAC_FILTER, config))
