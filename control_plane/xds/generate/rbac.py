"""RBAC filters enforcing MeshTrafficPermissions on an inbound, by the caller's SPIFFE identity.

As Kuma: HTTP inbounds get the HTTP RBAC filter (a denied request is answered 403 `RBAC: access
denied`, and allowed requests on the same connection keep working), TCP inbounds the network RBAC
filter (a denied connection is closed). Enforced rules ALLOW the principals of `Allow` and
`AllowWithShadowDeny`, so a caller no rule names is denied; shadow rules DENY the
`AllowWithShadowDeny` callers, which only counts them (`<prefix>rbac.shadow_denied`).
"""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.matcher.v3 import string_pb2

from control_plane.resources.meshtrafficpermission import ALLOW_WITH_SHADOW_DENY
from control_plane.xds.generate.packing import pack
from control_plane.xds.generate.permissions import ALLOWING, CallerActions
from control_plane.xds.generate.tls import spiffe_id

NETWORK_RBAC_FILTER = "envoy.filters.network.rbac"
HTTP_RBAC_FILTER = "envoy.filters.http.rbac"
POLICY_NAME = "MeshTrafficPermission"
SHADOW_DENYING = frozenset({ALLOW_WITH_SHADOW_DENY})


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


def _rbac(action: rbac_pb2.RBAC.Action, principals: list[rbac_pb2.Principal]) -> rbac_pb2.RBAC:
    rules = rbac_pb2.RBAC(action=action)
    if principals:  # ALLOW without any policy denies everyone, as wanted
        rules.policies[POLICY_NAME].CopyFrom(
            rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=principals)
        )
    return rules


def rbac_rules(actions: CallerActions, mesh: str) -> tuple[rbac_pb2.RBAC, rbac_pb2.RBAC | None]:
    """(enforced rules, shadow rules or None)."""
    rules = _rbac(rbac_pb2.RBAC.ALLOW, _principals(actions, ALLOWING, mesh))
    shadow = None
    if actions.shadow_denies_anyone:
        shadow = _rbac(rbac_pb2.RBAC.DENY, _principals(actions, SHADOW_DENYING, mesh))
    return rules, shadow


def network_rbac_filter(actions: CallerActions, mesh: str, stats: str) -> listener_components_pb2.Filter:
    rules, shadow = rbac_rules(actions, mesh)
    # The trailing dot makes the stats `<stats>.rbac.allowed`, not `<stats>rbac.allowed` (as Kuma).
    config = network_rbac_pb2.RBAC(stat_prefix=f"{stats}.", rules=rules)
    if shadow is not None:
        config.shadow_rules.CopyFrom(shadow)
    return listener_components_pb2.Filter(name=NETWORK_RBAC_FILTER, typed_config=pack(config))


def http_rbac_filter(actions: CallerActions, mesh: str) -> hcm.HttpFilter:
    rules, shadow = rbac_rules(actions, mesh)
    config = http_rbac_pb2.RBAC(rules=rules)
    if shadow is not None:
        config.shadow_rules.CopyFrom(shadow)
    return hcm.HttpFilter(name=HTTP_RBAC_FILTER, typed_config=pack(config))
