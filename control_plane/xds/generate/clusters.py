"""Clusters: the application behind each inbound (STATIC) and each outbound service (EDS over ADS).

With mTLS on, an outbound cluster is made secure per proxy (`secure_cluster`): the
UpstreamTlsContext of `tls.py` names the proxy's own certificate files.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, protocol_pb2
from google.protobuf import duration_pb2

from control_plane.policies.core.parts import http_protocol_options, set_http_protocol_options
from control_plane.resources.dataplane import Inbound
from control_plane.xds.generate.endpoints import static_load_assignment
from control_plane.xds.generate.protocol import is_http, needs_http2_upstream
from control_plane.xds.names import local_cluster_name

CONNECT_TIMEOUT_S = 5  # Kuma's default connect timeout
LOCAL_SERVICE_ADDRESS = "127.0.0.1"


def local_cluster(inbound: Inbound, protocol: str) -> cluster_pb2.Cluster:
    name = local_cluster_name(inbound.workload_port)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_pb2.Duration(seconds=CONNECT_TIMEOUT_S),
        load_assignment=static_load_assignment(
            name, inbound.serviceAddress or LOCAL_SERVICE_ADDRESS, inbound.workload_port
        ),
    )
    _set_upstream_protocol(cluster, protocol)
    return cluster


def outbound_cluster(service: str, protocol: str) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=service,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration_pb2.Duration(seconds=CONNECT_TIMEOUT_S),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_config_source()),
    )
    _set_upstream_protocol(cluster, protocol)
    return cluster


def secure_cluster(
    cluster: cluster_pb2.Cluster,
    protocol: str,
    tls: base_pb2.TransportSocket,
    max_connection_duration_s: float,
) -> cluster_pb2.Cluster:
    """A copy of `cluster` (which may be shared) with mTLS, whose pooled HTTP connections live at
    most `max_connection_duration_s` (a shorter limit a policy set is kept)."""
    secure = cluster_pb2.Cluster()
    secure.CopyFrom(cluster)
    secure.transport_socket.CopyFrom(tls)
    if is_http(protocol):
        options = http_protocol_options(secure)
        limit = options.common_http_protocol_options.max_connection_duration
        wanted = int(max_connection_duration_s * 1000)
        if not options.common_http_protocol_options.HasField("max_connection_duration") or (
            limit.ToMilliseconds() == 0 or limit.ToMilliseconds() > wanted
        ):
            limit.FromMilliseconds(wanted)
        set_http_protocol_options(secure, options)
    return secure


def ads_config_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def _set_upstream_protocol(cluster: cluster_pb2.Cluster, protocol: str) -> None:
    """HTTP/2 and gRPC services are called with HTTP/2; everything else keeps Envoy's default."""
    if needs_http2_upstream(protocol):
        options = http_protocol_options(cluster)
        options.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
        set_http_protocol_options(cluster, options)
