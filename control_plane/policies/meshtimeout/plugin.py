"""MeshTimeout → Envoy, as Kuma maps it (an unset field takes Kuma's default once a policy applies):
- connectionTimeout → cluster.connect_timeout;
- idleTimeout → the cluster's HTTP idle_timeout (HTTP) or tcp_proxy.idle_timeout (TCP);
- http.requestTimeout → route.timeout; http.streamIdleTimeout → route.idle_timeout;
- http.maxStreamDuration / maxConnectionDuration → the cluster's common HTTP protocol options;
- http.requestHeadersTimeout → the connection manager's request_headers_timeout.
Outbound: the `to` conf of the service; inbound: the merged `from` / `rules` (all callers), on the
inbound's chains and the cluster of the application behind it.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from control_plane.policies.core.fields import set_duration
from control_plane.policies.core.parts import (
    ChainParts,
    InboundParts,
    OutboundParts,
    http_protocol_options,
    set_http_protocol_options,
)
from control_plane.policies.core.rules import InboundPolicy, MergedConf
from control_plane.policies.meshtimeout import api
from control_plane.policies.meshtimeout.api import Conf, Http
from control_plane.xds.generate.protocol import is_http


def apply_outbound(merged: MergedConf, parts: OutboundParts) -> None:
    conf: Conf = merged.parsed(Conf)
    _configure_chain(conf, parts.chain)
    _configure_cluster(conf, parts.cluster, parts.protocol)


def apply_inbound(policy: InboundPolicy, parts: InboundParts) -> None:
    merged = policy.catch_all
    if merged is None:
        return
    conf: Conf = merged.parsed(Conf)
    for chain in parts.chains:
        _configure_chain(conf, chain)
    if parts.cluster is not None:
        _configure_cluster(conf, parts.cluster, parts.protocol)


def _configure_chain(conf: Conf, chain: ChainParts) -> None:
    http = conf.http or Http.model_construct()
    if chain.tcp_proxy is not None:
        set_duration(chain.tcp_proxy.idle_timeout, conf.idleTimeout, api.DEFAULT_IDLE_TIMEOUT_S)
    if chain.hcm is None:
        return
    for route in chain.routes():
        set_duration(route.route.timeout, http.requestTimeout, api.DEFAULT_REQUEST_TIMEOUT_S)
        set_duration(route.route.idle_timeout, http.streamIdleTimeout, api.DEFAULT_STREAM_IDLE_TIMEOUT_S)
    set_duration(
        chain.hcm.request_headers_timeout, http.requestHeadersTimeout, api.DEFAULT_REQUEST_HEADERS_TIMEOUT_S
    )
    # Idle connections are closed by the cluster's setting (below), not the listener's.
    set_duration(chain.hcm.common_http_protocol_options.idle_timeout, "0s", 0)


def _configure_cluster(conf: Conf, cluster: cluster_pb2.Cluster, protocol: str) -> None:
    set_duration(cluster.connect_timeout, conf.connectionTimeout, api.DEFAULT_CONNECTION_TIMEOUT_S)
    if not is_http(protocol):
        return
    http = conf.http or Http.model_construct()
    options = http_protocol_options(cluster)
    common = options.common_http_protocol_options
    set_duration(common.idle_timeout, conf.idleTimeout, api.DEFAULT_IDLE_TIMEOUT_S)
    set_duration(common.max_stream_duration, http.maxStreamDuration, api.DEFAULT_MAX_STREAM_DURATION_S)
    set_duration(
        common.max_connection_duration, http.maxConnectionDuration, api.DEFAULT_MAX_CONNECTION_DURATION_S
    )
    set_http_protocol_options(cluster, options)
