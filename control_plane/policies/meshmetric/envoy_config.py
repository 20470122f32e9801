"""The Envoy resources of a proxy's metrics endpoint: pure builders, cached (the same inputs give
the same message, shared between proxies and never changed in place).

- `_kuma:metrics:prometheus:<clientId>` (Kuma's name): a listener on the Dataplane's address and
  the backend's port; the backend's path (exact) goes to the hijacker cluster with its path
  rewritten to `/meshmetric` (the scraper's query string kept); any other path is a 404.
- `_kuma:metrics:hijacker` (Kuma's name): a STATIC cluster on the agent's Unix socket
  `<workdir>/kuma-metrics-hijacker.sock`.
- `kuma:meshmetric:config`: a listener on `<workdir>/kuma-meshmetric-config.sock` (0600) answering
  the agent's `GET /meshmetric` with what to merge (kuma_common/dp_contract.py), an etag, and 304 to
  `If-None-Match: <etag>`.
"""

from __future__ import annotations

from functools import lru_cache

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from control_plane.xds.generate.listeners import HCM_FILTER, ROUTER_FILTER
from control_plane.xds.generate.pack import pack
from kuma_common.dp_contract import (
    METRICS_CONFIG_PATH,
    METRICS_HIJACKER_PATH,
)

PROMETHEUS_LISTENER_PREFIX = "_kuma:metrics:prometheus"
HIJACKER_CLUSTER = "_kuma:metrics:hijacker"
CONFIG_LISTENER = "kuma:meshmetric:config"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
_SOCKET_MODE = 0o600
_CONNECT_TIMEOUT_S = 1
_SCRAPE_ROUTE_TIMEOUT_S = 30  # the hijacker answers within its application timeout (a few seconds)
_ENVOY_DEFAULT_BODY_LIMIT = 4096


def socket_path(workdir: str, name: str) -> str | None:
    """`<workdir>/<name>`, or None if it is too long for a Unix socket."""
    path = f"{workdir.rstrip('/')}/{name}"
    return path if len(path.encode()) <= MAX_SOCKET_PATH else None


def _router_manager(
    stat_prefix: str, route_config: route_pb2.RouteConfiguration
) -> hcm.HttpConnectionManager:
    return hcm.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm.HttpConnectionManager.AUTO,
        route_config=route_config,
        http_filters=[hcm.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))],
    )


def _listener(
    name: str, address: address_pb2.Address, manager: hcm.HttpConnectionManager
) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(
        name=name,
        address=address,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager))]
            )
        ],
    )
    # Bound even on a transparent proxy (whose set-up unbinds listeners that do not say): a scrape
    # redirected to the inbound passthrough is handed here by `use_original_dst` all the same.
    listener.bind_to_port.value = True
    return listener


def prometheus_listener_name(client_id: str) -> str:
    return f"{PROMETHEUS_LISTENER_PREFIX}:{client_id}"


@lru_cache(maxsize=4096)
def prometheus_listener(client_id: str, address: str, port: int, path: str) -> listener_pb2.Listener:
    """The scrape endpoint: `path` on address:port → the hijacker, as `/meshmetric`."""
    name = prometheus_listener_name(client_id)
    scrape = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(path=path),
        route=route_components_pb2.RouteAction(
            cluster=HIJACKER_CLUSTER,
            prefix_rewrite=METRICS_HIJACKER_PATH,
            timeout=duration_pb2.Duration(seconds=_SCRAPE_ROUTE_TIMEOUT_S),
        ),
    )
    routes = route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[route_components_pb2.VirtualHost(name=name, domains=["*"], routes=[scrape])],
    )
    socket = address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))
    return _listener(name, socket, _router_manager(name, routes))


@lru_cache(maxsize=4096)
def hijacker_cluster(path: str) -> cluster_pb2.Cluster:
    """The agent's hijacker on its Unix socket `path`."""
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(pipe=address_pb2.Pipe(path=path))
        )
    )
    return cluster_pb2.Cluster(
        name=HIJACKER_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_pb2.Duration(seconds=_CONNECT_TIMEOUT_S),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=HIJACKER_CLUSTER,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
        ),
    )


@lru_cache(maxsize=4096)
def config_listener(path: str, body: bytes, etag: str) -> listener_pb2.Listener:
    """The agent's dynamic metrics config on the Unix socket `path` (0600)."""
    etag_header = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="etag", value=etag),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    unchanged = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(
            path=METRICS_CONFIG_PATH,
            headers=[
                route_components_pb2.HeaderMatcher(
                    name="if-none-match", string_match=string_pb2.StringMatcher(exact=etag)
                )
            ],
        ),
        direct_response=route_components_pb2.DirectResponseAction(status=304),
        response_headers_to_add=[etag_header],
    )
    current = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(path=METRICS_CONFIG_PATH),
        direct_response=route_components_pb2.DirectResponseAction(
            status=200, body=base_pb2.DataSource(inline_bytes=body)
        ),
        response_headers_to_add=[
            etag_header,
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="content-type", value="application/json"),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            ),
        ],
    )
    routes = route_pb2.RouteConfiguration(
        name=CONFIG_LISTENER,
        virtual_hosts=[
            route_components_pb2.VirtualHost(name=CONFIG_LISTENER, domains=["*"], routes=[unchanged, current])
        ],
        max_direct_response_body_size_bytes=wrappers_pb2.UInt32Value(
            value=max(_ENVOY_DEFAULT_BODY_LIMIT, len(body))
        ),
    )
    pipe = address_pb2.Address(pipe=address_pb2.Pipe(path=path, mode=_SOCKET_MODE))
    return _listener(CONFIG_LISTENER, pipe, _router_manager("kuma_meshmetric_config", routes))
