"""MeshRateLimit → Envoy, as Kuma maps it:
- local.http (unless disabled, and once a requestRate is merged in) → the HTTP local rate limit
  filter (`envoy.filters.http.local_ratelimit`) in the connection manager, just before the router:
  a token bucket of `num` tokens refilled with `num` every `interval`, enabled and enforced for
  100 % of requests; a refused request gets `onRateLimit.status` (429 by default) and its headers
  (`set` replaces, `add` appends). Stats: `<chain stat prefix>.http_local_rate_limit.rate_limited`.
- local.tcp (unless disabled, once a connectionRate is merged in) → the network local rate limit
  filter (`envoy.filters.network.local_ratelimit`) before the chain's main filter (tcp_proxy, or
  the connection manager of an HTTP chain: Kuma limits those connections too); a connection over
  the limit is closed at once. Stats: `local_rate_limit.<chain stat prefix>.rate_limited`.
Inbound: the merged `from` / `rules` (all callers) on every chain of the inbound's listener;
outbound (`to`): the chain receiving the local application's calls to the service.

One limit per inbound, and per outbound service: Envoy gives each filter chain its own token
bucket unless filters share a `share_key`. A PERMISSIVE inbound has two chains (mesh peers over
mTLS, plaintext callers); the TCP limit carries the inbound's name as its share key, so both chains
draw on one bucket, as a user expects; likewise an outbound's TCP limit is keyed by its service
(one bucket across the explicit and transparent listeners reaching it). Envoy's HTTP filter has no
such key (Kuma's per-route buckets neither): each HTTP chain counts its own requests, so in
PERMISSIVE mode mesh peers and plaintext callers may each send `num` requests per interval.
Kuma puts the HTTP bucket on every route (`typed_per_filter_config`), one bucket per route; here
the filter itself holds it, one bucket for the chain's routes together.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as http_local
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2 as tcp_local
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2

from control_plane.policies.core.fields import set_duration
from control_plane.policies.core.parts import ChainParts, InboundParts, OutboundParts
from control_plane.policies.core.rules import InboundPolicy, MergedConf
from control_plane.policies.meshratelimit.api import DEFAULT_STATUS, Conf, HeaderModifier, LocalHTTP, Rate
from control_plane.xds.generate.pack import network_filter, pack
from control_plane.xds.names import inbound_listener_name

HTTP_FILTER = "envoy.filters.http.local_ratelimit"
TCP_FILTER = "envoy.filters.network.local_ratelimit"
# Kuma's runtime keys: a runtime override could switch the filter off or to dry-run.
ENABLED_KEY, ENFORCED_KEY = "local_rate_limit_enabled", "local_rate_limit_enforced"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


def apply_outbound(merged: MergedConf, parts: OutboundParts) -> None:
    _limit(merged.parsed(Conf), parts.chain, share_key=f"outbound:{parts.service}")


def apply_inbound(policy: InboundPolicy, parts: InboundParts) -> None:
    merged = policy.catch_all
    if merged is None:
        return
    conf: Conf = merged.parsed(Conf)
    listener = inbound_listener_name(parts.dataplane.inbound_address(parts.inbound), parts.inbound.port)
    for chain in parts.chains:
        _limit(conf, chain, share_key=listener)


def _limit(conf: Conf, chain: ChainParts, share_key: str) -> None:
    http, tcp = conf.local.http, conf.local.tcp
    if http is not None and http.enforced and chain.hcm is not None:
        config = pack(_http_limit(http, chain.stat_prefix))
        # The router is the last HTTP filter: requests are counted just before it.
        chain.hcm.http_filters.insert(
            len(chain.hcm.http_filters) - 1, hcm.HttpFilter(name=HTTP_FILTER, typed_config=config)
        )
    if tcp is not None and tcp.enforced:
        assert tcp.connectionRate is not None
        config = tcp_local.LocalRateLimit(
            stat_prefix=chain.stat_prefix, token_bucket=_bucket(tcp.connectionRate), share_key=share_key
        )
        chain.network_filters.append(network_filter(TCP_FILTER, config))


def _http_limit(http: LocalHTTP, stat_prefix: str) -> http_local.LocalRateLimit:
    assert http.requestRate is not None
    on_limit = http.onRateLimit
    status = on_limit.status if on_limit is not None and on_limit.status is not None else DEFAULT_STATUS
    config = http_local.LocalRateLimit(
        stat_prefix=stat_prefix,
        status=http_status_pb2.HttpStatus(code=status),
        token_bucket=_bucket(http.requestRate),
        filter_enabled=_all_requests(ENABLED_KEY),
        filter_enforced=_all_requests(ENFORCED_KEY),
    )
    if on_limit is not None and on_limit.headers is not None:
        config.response_headers_to_add.extend(_headers(on_limit.headers))
    return config


def _bucket(rate: Rate) -> token_bucket_pb2.TokenBucket:
    bucket = token_bucket_pb2.TokenBucket(max_tokens=rate.num)
    bucket.tokens_per_fill.value = rate.num
    set_duration(bucket.fill_interval, rate.interval, 0)
    return bucket


def _all_requests(runtime_key: str) -> base_pb2.RuntimeFractionalPercent:
    every = percent_pb2.FractionalPercent(numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED)
    return base_pb2.RuntimeFractionalPercent(default_value=every, runtime_key=runtime_key)


def _headers(headers: HeaderModifier) -> list[base_pb2.HeaderValueOption]:
    """`set` replaces the header, `add` appends a value to it (one entry each: a comma-separated
    value stays one value, where Kuma splits a `set` value at its commas)."""
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=h.name, value=h.value), append_action=action
        )
        for action, listed in ((_OVERWRITE, headers.set), (_APPEND, headers.add))
        for h in listed or []
    ]
