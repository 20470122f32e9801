"""MeshHTTPRoute → the routes of an HTTP outbound's connection manager (Kuma's mapping):
- each match of each rule is one route, ordered by Gateway API precedence; the route calls
  arrive at without a rule (prefix "/" to the service) stays last, unless a rule matches just "/";
- path Exact → `path`, PathPrefix → `path_separated_prefix` ("/" → `prefix`), RegularExpression →
  `safe_regex`; method → a `:method` header matcher; headers and query parameters → matchers;
- backendRefs → the route's cluster, or `weighted_clusters`; a MeshServiceSubset picks endpoints
  by tags (`metadata_match` on `envoy.lb`, the target cluster gets the subset selector); a service
  the proxy does not call otherwise gets a cluster;
- filters: header modifiers → `request_headers_to_add/remove` and `response_headers_to_add/remove`;
  RequestRedirect → `redirect`; URLRewrite → `host_rewrite_literal` / `auto_host_rewrite`,
  `regex_rewrite` of the path; RequestMirror → `request_mirror_policies`.
Each route starts as a copy of the default route, so what other policies set on routes (timeouts,
retries, hash policies: applied after this plugin) and defaults apply to every route. TCP outbounds
have no routes: a MeshHTTPRoute for a TCP service changes nothing (MeshTCPRoute does that).
"""

from __future__ import annotations

import re

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as route_pb
from envoy.type.matcher.v3 import regex_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2

from control_plane.policies.core.fields import decimal_of
from control_plane.policies.core.http import header_matcher
from control_plane.policies.core.parts import LB_METADATA, OutboundParts, add_subset_selector
from control_plane.policies.core.rules import MergedConf
from control_plane.policies.meshhttproute.api import (
    BackendRef,
    HeaderModifier,
    Match,
    Merged,
    PathRewrite,
    RequestRedirect,
    RuleConf,
    URLRewrite,
)

REDIRECT_CODES = {
    301: route_pb.RedirectAction.MOVED_PERMANENTLY,
    302: route_pb.RedirectAction.FOUND,
    303: route_pb.RedirectAction.SEE_OTHER,
    307: route_pb.RedirectAction.TEMPORARY_REDIRECT,
    308: route_pb.RedirectAction.PERMANENT_REDIRECT,
}
_SET = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_ADD = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


def apply_outbound(merged: MergedConf, parts: OutboundParts) -> None:
    conf: Merged = merged.parsed(Merged)
    if parts.chain.hcm is None or not conf.rules:
        return
    virtual_host = parts.chain.hcm.route_config.virtual_hosts[0]
    default = virtual_host.routes[-1]
    keyed = [
        (precedence(match), order, route(default, match, rule.default, parts))
        for order, (rule, match) in enumerate((r, m) for r in conf.rules for m in r.matches)
    ]
    keyed.sort(key=lambda item: (item[0], item[1]))
    routes = [r for *_, r in keyed]
    if not any(_is_catch_all(m) for r in conf.rules for m in r.matches):
        routes.append(default)
    del virtual_host.routes[:]
    virtual_host.routes.extend(routes)


def precedence(match: Match) -> tuple[int, int, int, int, int]:
    """Gateway API's order (smaller first): an exact path, then the longest prefix or regular
    expression (as Kuma's comment intends: its code puts every prefix, even "/", before any regex,
    which leaves a regex route behind "/" unreachable), then no path; a method before none; more
    headers, then more query parameters, first."""
    path = match.path
    if path is None:
        rank, length = 2, 0
    else:
        rank, length = (0 if path.type == "Exact" else 1), len(path.value)
    headers, queries = len(match.headers or []), len(match.queryParams or [])
    return rank, -length, 0 if match.method else 1, -headers, -queries


def _is_catch_all(match: Match) -> bool:
    return (
        match.path is not None
        and match.path.type == "PathPrefix"
        and match.path.value == "/"
        and not (match.method or match.headers or match.queryParams)
    )


def route(default: route_pb.Route, match: Match, conf: RuleConf, parts: OutboundParts) -> route_pb.Route:
    built = route_pb.Route()
    built.CopyFrom(default)
    built.match.CopyFrom(_match(match))
    redirect = next((f.requestRedirect for f in conf.filters or [] if f.requestRedirect), None)
    if redirect is not None:
        built.ClearField("route")
        built.redirect.CopyFrom(_redirect(redirect, match))
    else:
        backends_of_route(built.route, conf.backendRefs or [], parts)
    for rule_filter in conf.filters or []:
        if rule_filter.requestHeaderModifier:
            _modify(
                built.request_headers_to_add,
                built.request_headers_to_remove,
                rule_filter.requestHeaderModifier,
            )
        elif rule_filter.responseHeaderModifier:
            _modify(
                built.response_headers_to_add,
                built.response_headers_to_remove,
                rule_filter.responseHeaderModifier,
            )
        elif rule_filter.urlRewrite:
            _rewrite(built.route, rule_filter.urlRewrite, match)
        elif rule_filter.requestMirror:
            mirror = rule_filter.requestMirror
            target_of(mirror.backendRef.name, parts)
            policy = built.route.request_mirror_policies.add(cluster=mirror.backendRef.name)
            percentage = decimal_of(mirror.percentage) if mirror.percentage is not None else 100
            policy.runtime_fraction.default_value.CopyFrom(
                percent_pb2.FractionalPercent(
                    numerator=int(percentage * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
                )
            )
    return built


def _match(match: Match) -> route_pb.RouteMatch:
    result = route_pb.RouteMatch()
    path = match.path
    if path is None or (path.type == "PathPrefix" and path.value == "/"):
        result.prefix = "/"
    elif path.type == "Exact":
        result.path = path.value
    elif path.type == "PathPrefix":
        result.path_separated_prefix = path.value
    else:
        result.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=path.value))
    if match.method:
        result.headers.add(name=":method").string_match.exact = match.method
    result.headers.extend(header_matcher(h) for h in match.headers or [])
    for query in match.queryParams or []:
        matcher = result.query_parameters.add(name=query.name)
        if query.type == "Exact":
            matcher.string_match.exact = query.value
        else:
            matcher.string_match.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=query.value))
    return result


def backends_of_route(action: route_pb.RouteAction, refs: list[BackendRef], parts: OutboundParts) -> None:
    """The route's backends (MeshTCPRoute uses this too); none: the service itself, as it is."""
    if not refs:
        return
    for ref in refs:
        target = target_of(ref.name, parts)
        if ref.tags:
            add_subset_selector(target.cluster, list(ref.tags))
    if len(refs) == 1:
        action.cluster = refs[0].name
        if refs[0].tags:
            action.metadata_match.filter_metadata[LB_METADATA].CopyFrom(subset_struct(refs[0]))
        return
    action.ClearField("cluster")
    for ref in refs:
        weighted = action.weighted_clusters.clusters.add(name=ref.name)
        weighted.weight.value = 1 if ref.weight is None else ref.weight
        if ref.tags:
            weighted.metadata_match.filter_metadata[LB_METADATA].CopyFrom(subset_struct(ref))


def target_of(service: str, parts: OutboundParts) -> OutboundParts:
    """The outbound a backend names: this one, or another of the build (made if it lacks it)."""
    if service == parts.service or parts.outbounds is None:
        return parts
    return parts.outbounds.require(service)


def subset_struct(ref: BackendRef) -> struct_pb2.Struct:
    """The backend's tags as the `envoy.lb` metadata its endpoints carry."""
    result = struct_pb2.Struct()
    result.update(dict(sorted(ref.subset().items())))
    return result


def _modify(to_add: object, to_remove: object, modifier: HeaderModifier) -> None:
    for header in modifier.set or []:
        to_add.add(header=base_pb2.HeaderValue(key=header.name, value=header.value), append_action=_SET)  # type: ignore[attr-defined]
    for header in modifier.add or []:
        to_add.add(header=base_pb2.HeaderValue(key=header.name, value=header.value), append_action=_ADD)  # type: ignore[attr-defined]
    to_remove.extend(modifier.remove or [])  # type: ignore[attr-defined]


def _redirect(redirect: RequestRedirect, match: Match) -> route_pb.RedirectAction:
    result = route_pb.RedirectAction(response_code=REDIRECT_CODES[redirect.statusCode or 302])
    if redirect.scheme:
        result.scheme_redirect = redirect.scheme
    if redirect.hostname:
        result.host_redirect = redirect.hostname
    if redirect.port:
        result.port_redirect = redirect.port
    if redirect.path is not None:
        if redirect.path.type == "ReplaceFullPath":
            result.path_redirect = redirect.path.replaceFullPath or "/"
        else:
            result.regex_rewrite.CopyFrom(_prefix_rewrite(redirect.path, match))
    return result


def _rewrite(action: route_pb.RouteAction, rewrite: URLRewrite, match: Match) -> None:
    if rewrite.hostname:
        action.host_rewrite_literal = rewrite.hostname
    elif rewrite.hostToBackendHostname:
        action.auto_host_rewrite.value = True
    if rewrite.path is not None:
        if rewrite.path.type == "ReplaceFullPath":
            action.regex_rewrite.pattern.regex = "^.*$"
            action.regex_rewrite.substitution = rewrite.path.replaceFullPath or "/"
        else:
            action.regex_rewrite.CopyFrom(_prefix_rewrite(rewrite.path, match))


def _prefix_rewrite(path: PathRewrite, match: Match) -> regex_pb2.RegexMatchAndSubstitute:
    """The matched prefix replaced, Gateway API's way (Envoy replaces what the pattern matches):
    prefix /v2 → /api: /v2/x → /api/x, /v2 → /api; → /: /v2/x → /x, /v2 → / (Envoy's own
    prefix_rewrite would give //x)."""
    prefix = match.path.value if match.path is not None else "/"
    replacement = path.replacePrefixMatch or "/"
    if prefix == "/":
        pattern, substitution = "^/", replacement.rstrip("/") + "/"
    elif replacement == "/":
        pattern, substitution = "^" + re.escape(prefix) + "/?", "/"
    else:
        pattern, substitution = "^" + re.escape(prefix), replacement.rstrip("/")
    result = regex_pb2.RegexMatchAndSubstitute(substitution=substitution)
    result.pattern.regex = pattern
    return result
