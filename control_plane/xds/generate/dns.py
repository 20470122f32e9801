"""How a transparent proxy's agent gets the mesh's DNS records: its own Envoy serves them.

A listener on the Unix socket `<workdir>/kuma-dns.sock` (0600: the agent's user only) answers
`GET /dns` with the records (kuma_common/dp_contract.py) and their etag, and `304 Not Modified` to
a request whose `If-None-Match` names the current etag. The route table holding the records is
one message per mesh change, sent by RDS and serialized once for every proxy of the mesh; a
proxy's own part is the listener, a few dozen bytes. So the records follow every mesh change down
the ADS stream the proxy already has: no second channel, no second credential.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2

from control_plane.dns.records import DnsRecords
from control_plane.xds.generate.listeners import HCM_FILTER, ROUTER_FILTER
from control_plane.xds.generate.pack import pack
from kuma_common.dp_contract import DNS_RECORDS_PATH, DNS_RECORDS_SOCKET

log = logging.getLogger(__name__)

DNS_RECORDS_NAME = "kuma:dns:records"  # the listener's and the route table's name
_SOCKET_MODE = 0o600
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
_ENVOY_DEFAULT_BODY_LIMIT = 4096


def dns_records_route(records: DnsRecords) -> route_pb2.RouteConfiguration:
    """The route table answering the agent's polls (one per mesh change, shared by its proxies)."""
    etag = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="etag", value=records.etag),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    content_type = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="content-type", value="application/json"),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    unchanged = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(
            path=DNS_RECORDS_PATH,
            headers=[
                route_components_pb2.HeaderMatcher(
                    name="if-none-match",
                    string_match=string_pb2.StringMatcher(exact=records.etag),
                )
            ],
        ),
        direct_response=route_components_pb2.DirectResponseAction(status=304),
        response_headers_to_add=[etag],
    )
    current = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(path=DNS_RECORDS_PATH),
        direct_response=route_components_pb2.DirectResponseAction(
            status=200, body=base_pb2.DataSource(inline_bytes=records.body)
        ),
        response_headers_to_add=[etag, content_type],
    )
    return route_pb2.RouteConfiguration(
        name=DNS_RECORDS_NAME,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=DNS_RECORDS_NAME, domains=["*"], routes=[unchanged, current]
            )
        ],
        # Envoy refuses a direct response body larger than this (4 KiB unless said).
        max_direct_response_body_size_bytes=wrappers_pb2.UInt32Value(
            value=max(_ENVOY_DEFAULT_BODY_LIMIT, len(records.body))
        ),
    )


@lru_cache(maxsize=16384)
def dns_records_listener(workdir: str) -> listener_pb2.Listener | None:
    """The proxy's listener on `<workdir>/kuma-dns.sock`; None (logged once) if that path is too long
    for a Unix socket. It depends on the work dir only: one message per proxy, kept across mesh
    changes (never changed in place: policies edit a copy), so it is built and packed once."""
    path = f"{workdir.rstrip('/')}/{DNS_RECORDS_SOCKET}"
    if len(path.encode()) > _MAX_SOCKET_PATH:
        _warn_path_too_long(path)
        return None
    manager = hcm.HttpConnectionManager(
        stat_prefix="kuma_dns_records",
        codec_type=hcm.HttpConnectionManager.AUTO,
        rds=hcm.Rds(
            route_config_name=DNS_RECORDS_NAME,
            config_source=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.V3,
            ),
        ),
        http_filters=[hcm.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))],
    )
    listener = listener_pb2.Listener(
        name=DNS_RECORDS_NAME,
        address=address_pb2.Address(pipe=address_pb2.Pipe(path=path, mode=_SOCKET_MODE)),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager))]
            )
        ],
    )
    listener.bind_to_port.value = True  # the transparent set-up unbinds listeners that do not say
    return listener


@lru_cache(maxsize=64)
def _warn_path_too_long(path: str) -> None:
    log.warning(
        "the DNS records socket %s is longer than a Unix socket path may be (%d bytes): the agent "
        "of that proxy gets no service names; give kuma-dp a shorter --work-dir",
        path,
        _MAX_SOCKET_PATH,
    )
