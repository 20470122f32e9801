"""MeshRetry → Envoy, as Kuma maps it (an unset field takes Kuma's default once a policy applies):
- tcp.maxConnectAttempt → tcp_proxy.max_connect_attempts (TCP outbounds);
- http (protocol http or http2) / grpc (protocol grpc) → retry_policy of every route of the
  outbound's connection manager: numRetries → num_retries (0: no retry policy at all),
  perTryTimeout → per_try_timeout, backOff → retry_back_off, rateLimitedBackOff →
  rate_limited_retry_back_off, retryOn → retry_on (status codes → retriable_status_codes plus the
  `retriable-status-codes` condition; HttpMethod<Name> → retriable_request_headers on `:method`),
  retriableRequestHeaders → retriable_request_headers, retriableResponseHeaders → retriable_headers
  plus the `retriable-headers` condition, hostSelection → retry_host_predicate / retry_priority,
  hostSelectionMaxAttempts → host_selection_retry_max_attempts.
Where this differs from Kuma 2.14 (on purpose): http2 services get the `http` section (Kuma gives
them no retries); gRPC `Canceled` is Envoy's `cancelled` (Kuma writes `canceled`, which Envoy
ignores); retriableResponseHeaders turn on `retriable-headers` (without it Envoy never consults
them); a backOff without baseInterval gets 25ms for HTTP too (Envoy refuses a back-off without it).
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as route_pb
from envoy.extensions.retry.host.omit_host_metadata.v3 import omit_host_metadata_config_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import struct_pb2

from control_plane.policies.core.fields import seconds, set_duration
from control_plane.policies.core.http import header_matcher
from control_plane.policies.core.parts import OutboundParts
from control_plane.policies.core.rules import MergedConf
from control_plane.policies.meshretry import api
from control_plane.policies.meshretry.api import Conf, Grpc, Http, Predicate
from control_plane.xds.generate.endpoints import LB_METADATA
from control_plane.xds.generate.pack import pack
from control_plane.xds.generate.protocol import GRPC, is_http

RETRIABLE_STATUS_CODES = "retriable-status-codes"
RETRIABLE_HEADERS = "retriable-headers"
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
OMIT_HOST_METADATA = "envoy.retry_host_predicates.omit_host_metadata"
PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"
METHOD_HEADER = ":method"


def apply_outbound(merged: MergedConf, parts: OutboundParts) -> None:
    conf: Conf = merged.parsed(Conf)
    tcp_proxy = parts.chain.tcp_proxy
    if tcp_proxy is not None:
        if conf.tcp is not None:
            tcp_proxy.max_connect_attempts.value = conf.tcp.maxConnectAttempt
        return
    if not is_http(parts.protocol):
        return
    policy = grpc_retry_policy(conf.grpc) if parts.protocol == GRPC else http_retry_policy(conf.http)
    if policy is None:
        return
    for route in parts.chain.routes():
        if route.HasField("route"):
            route.route.retry_policy.CopyFrom(policy)


def http_retry_policy(http: Http | None) -> route_pb.RetryPolicy | None:
    if http is None or http.numRetries == 0:
        return None
    policy = _common(http)
    items = http.retryOn or []
    conditions = [api.HTTP_CONDITIONS[i] for i in items if not (api.is_status_code(i) or api.is_method(i))]
    retry_on = conditions or list(api.DEFAULT_HTTP_RETRY_ON)
    codes = [int(i) for i in items if api.is_status_code(i)]
    if codes:
        policy.retriable_status_codes.extend(codes)
        retry_on.append(RETRIABLE_STATUS_CODES)
    for item in items:
        if api.is_method(item):
            method = item.removeprefix(api.HTTP_METHOD_PREFIX).upper()
            policy.retriable_request_headers.append(
                route_pb.HeaderMatcher(
                    name=METHOD_HEADER, string_match=string_pb2.StringMatcher(exact=method)
                )
            )
    policy.retriable_request_headers.extend(map(header_matcher, http.retriableRequestHeaders or []))
    if http.retriableResponseHeaders:
        policy.retriable_headers.extend(map(header_matcher, http.retriableResponseHeaders))
        retry_on.append(RETRIABLE_HEADERS)
    policy.retry_on = ",".join(dict.fromkeys(retry_on))  # without repeats, in order
    _host_selection(policy, http.hostSelection or [])
    if http.hostSelectionMaxAttempts is not None:
        policy.host_selection_retry_max_attempts = http.hostSelectionMaxAttempts
    return policy


def grpc_retry_policy(grpc: Grpc | None) -> route_pb.RetryPolicy | None:
    if grpc is None or grpc.numRetries == 0:
        return None
    policy = _common(grpc)
    conditions = [api.GRPC_CONDITIONS[i] for i in grpc.retryOn or []]
    policy.retry_on = ",".join(dict.fromkeys(conditions or api.DEFAULT_GRPC_RETRY_ON))
    return policy


def _common(conf: Http | Grpc) -> route_pb.RetryPolicy:
    policy = route_pb.RetryPolicy()
    policy.num_retries.value = api.DEFAULT_NUM_RETRIES if conf.numRetries is None else conf.numRetries
    if conf.perTryTimeout is not None:
        set_duration(policy.per_try_timeout, conf.perTryTimeout, 0)
    if conf.backOff is not None:
        base = api.base_interval(conf.backOff)
        set_duration(policy.retry_back_off.base_interval, base, 0)
        if conf.backOff.maxInterval is not None:
            # Envoy refuses max < base; a merge of valid confs can still make one (e.g. a
            # baseInterval from one policy, a smaller maxInterval from another): the base wins.
            longest = max(conf.backOff.maxInterval, base, key=seconds)
            set_duration(policy.retry_back_off.max_interval, longest, 0)
    limited = conf.rateLimitedBackOff
    if limited is not None:
        back_off = policy.rate_limited_retry_back_off
        for header in limited.resetHeaders:
            back_off.reset_headers.add(name=header.name, format=_RESET_FORMATS[header.format])
        if limited.maxInterval is not None:
            set_duration(back_off.max_interval, limited.maxInterval, 0)
    return policy


_RESET_FORMATS = {
    "Seconds": route_pb.RetryPolicy.SECONDS,
    "UnixTimestamp": route_pb.RetryPolicy.UNIX_TIMESTAMP,
}


def _host_selection(policy: route_pb.RetryPolicy, predicates: list[Predicate]) -> None:
    for predicate in predicates:
        if predicate.predicate == "OmitPreviousHosts":
            policy.retry_host_predicate.add(
                name=PREVIOUS_HOSTS, typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate())
            )
        elif predicate.predicate == "OmitHostsWithTags":
            tags = struct_pb2.Struct()
            tags.update(dict(sorted((predicate.tags or {}).items())))
            config = omit_host_metadata_config_pb2.OmitHostMetadataConfig()
            config.metadata_match.filter_metadata[LB_METADATA].CopyFrom(tags)
            policy.retry_host_predicate.add(name=OMIT_HOST_METADATA, typed_config=pack(config))
        else:
            frequency = predicate.updateFrequency or api.DEFAULT_UPDATE_FREQUENCY
            config = previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=frequency)
            policy.retry_priority.name = PREVIOUS_PRIORITIES
            policy.retry_priority.typed_config.CopyFrom(pack(config))
