"""MeshFaultInjection → Envoy, as Kuma maps it: each entry of the merged `http` list is one HTTP
fault filter (`envoy.filters.http.fault`), in list order, just before the router:
- abort → abort.http_status, delay → delay.fixed_delay, responseBandwidth → response_rate_limit
  (fixed_limit.limit_kbps: Kuma's kbps is Envoy's KiB/s; Mbps x1000, Gbps x1000000), each with its
  own percentage (a whole number per HUNDRED, two decimals per TEN_THOUSAND, finer per MILLION);
- each fault of an entry is drawn on its own percentage: a request may be delayed, then aborted.
Not Kuma's: disable_downstream_cluster_stats, so a caller's `x-envoy-downstream-service-cluster`
header cannot make Envoy allocate fault stats per value it sends.

Outbound (`to`): the merged conf on the chain receiving the application's calls to the service.
Inbound (`from` / `rules`, see callers.py): on the chain for mesh peers (mTLS), a filter meant for
some callers is wrapped in an ExtensionWithMatcher that skips it unless the caller's certificate
URI SAN (Envoy's UriSanInput: the identity RBAC judges, not a header a caller could send) passes
the group's match and no earlier group's. Chains whose callers are not identified (a mesh without
mTLS; PERMISSIVE's plaintext chain) get only the faults for every caller, unwrapped.
Faults are HTTP only: a TCP inbound or outbound has no connection manager and gets nothing (the
policy is still accepted, as a mesh-wide one covers both kinds of service, and `kumactl inspect`
shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_UP

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.matching.common_inputs.ssl.v3 import ssl_inputs_pb2
from envoy.type.v3 import percent_pb2
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2, string_pb2

from control_plane.policies.core.fields import decimal_of, set_duration
from control_plane.policies.core.parts import InboundParts, OutboundParts
from control_plane.policies.core.rules import InboundPolicy, MergedConf
from control_plane.policies.core.spec import SpiffeIdMatch
from control_plane.policies.meshfaultinjection.api import Conf, Fault, bandwidth_kbps
from control_plane.policies.meshfaultinjection.callers import CallerGroup, caller_groups
from control_plane.xds.generate.pack import pack

FAULT_FILTER = "envoy.filters.http.fault"
URI_SAN_INPUT = "envoy.matching.inputs.uri_san"
Percent = percent_pb2.FractionalPercent


def apply_outbound(merged: MergedConf, parts: OutboundParts) -> None:
    conf: Conf = merged.parsed(Conf)
    if parts.chain.hcm is not None:
        _insert(parts.chain.hcm, [_filter(_fault(f)) for f in conf.http])


def apply_inbound(policy: InboundPolicy, parts: InboundParts) -> None:
    if not policy:
        return
    groups = caller_groups(policy, parts.mesh)
    for chain in parts.chains:
        if chain.hcm is not None:
            _insert(chain.hcm, _inbound_filters(groups, identified=chain.secure))


def _inbound_filters(groups: Sequence[CallerGroup], identified: bool) -> list[hcm.HttpFilter]:
    filters = []
    earlier: list[SpiffeIdMatch] = []  # the matches of the groups before: their callers are taken
    for group in groups:
        if group.callers is None or identified:
            conf: Conf = group.conf.parsed(Conf)
            for fault in conf.http:
                filters.append(_filter(_fault(fault), group.callers, earlier if identified else []))
        if group.callers is not None:
            earlier.append(group.callers)
    return filters


def _insert(manager: hcm.HttpConnectionManager, filters: list[hcm.HttpFilter]) -> None:
    """Before the router (the last HTTP filter), in order."""
    at = len(manager.http_filters) - 1
    for offset, http_filter in enumerate(filters):
        manager.http_filters.insert(at + offset, http_filter)


def _fault(fault: Fault) -> fault_pb2.HTTPFault:
    config = fault_pb2.HTTPFault(disable_downstream_cluster_stats=True)
    if fault.abort is not None:
        config.abort.http_status = fault.abort.httpStatus
        config.abort.percentage.CopyFrom(fractional_percent(fault.abort.percentage))
    if fault.delay is not None:
        set_duration(config.delay.fixed_delay, fault.delay.value, 0)
        config.delay.percentage.CopyFrom(fractional_percent(fault.delay.percentage))
    if fault.responseBandwidth is not None:
        limit = config.response_rate_limit
        limit.fixed_limit.limit_kbps = bandwidth_kbps(fault.responseBandwidth.limit)
        limit.percentage.CopyFrom(fractional_percent(fault.responseBandwidth.percentage))
    return config


def fractional_percent(value: int | float | str) -> Percent:
    """Kuma's mapping: a whole number per HUNDRED, two decimals per TEN_THOUSAND, else per MILLION."""
    number = decimal_of(value)
    for denominator, scale in ((Percent.HUNDRED, 1), (Percent.TEN_THOUSAND, 100)):
        if (number * scale) % 1 == 0:
            return Percent(numerator=int(number * scale), denominator=denominator)
    millionths = (number * 10_000).to_integral_value(rounding=ROUND_HALF_UP)
    return Percent(numerator=int(millionths), denominator=Percent.MILLION)


def _filter(
    fault: fault_pb2.HTTPFault, callers: SpiffeIdMatch | None = None, taken: Sequence[SpiffeIdMatch] = ()
) -> hcm.HttpFilter:
    """The fault filter, for callers passing `callers` (None: anyone) and none of `taken`."""
    skip_when = [_not(_caller_is(callers))] if callers is not None else []
    skip_when += [_caller_is(m) for m in taken]
    if not skip_when:
        return hcm.HttpFilter(name=FAULT_FILTER, typed_config=pack(fault))
    predicate = skip_when[0] if len(skip_when) == 1 else _any_of(skip_when)
    skip = xds_extension_pb2.TypedExtensionConfig(
        name="skip", typed_config=pack(skip_action_pb2.SkipFilter())
    )
    matcher = matcher_pb2.Matcher(
        matcher_list=matcher_pb2.Matcher.MatcherList(
            matchers=[
                matcher_pb2.Matcher.MatcherList.FieldMatcher(
                    predicate=predicate, on_match=matcher_pb2.Matcher.OnMatch(action=skip)
                )
            ]
        )
    )
    wrapped = extension_matcher_pb2.ExtensionWithMatcher(
        xds_matcher=matcher,
        extension_config=extension_pb2.TypedExtensionConfig(name=FAULT_FILTER, typed_config=pack(fault)),
    )
    return hcm.HttpFilter(name=FAULT_FILTER, typed_config=pack(wrapped))


Predicate = matcher_pb2.Matcher.MatcherList.Predicate


def _caller_is(match: SpiffeIdMatch) -> Predicate:
    value = (
        string_pb2.StringMatcher(exact=match.value)
        if match.type == "Exact"
        else string_pb2.StringMatcher(prefix=match.value)
    )
    source = xds_extension_pb2.TypedExtensionConfig(
        name=URI_SAN_INPUT, typed_config=pack(ssl_inputs_pb2.UriSanInput())
    )
    return Predicate(single_predicate=Predicate.SinglePredicate(input=source, value_match=value))


def _not(predicate: Predicate) -> Predicate:
    return Predicate(not_matcher=predicate)


def _any_of(predicates: list[Predicate]) -> Predicate:
    return Predicate(or_matcher=Predicate.PredicateList(predicate=predicates))
