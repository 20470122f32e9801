"""Clusters: the application behind each inbound (STATIC) and each outbound service (EDS over ADS).

With mTLS on, outbound clusters carry the UpstreamTlsContext built in `tls.py`.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import duration_pb2

from control_plane.resources.dataplane import Inbound
from control_plane.xds.generate.endpoints import static_load_assignment
from control_plane.xds.generate.packing import pack
from control_plane.xds.generate.protocol import is_http, needs_http2_upstream
from control_plane.xds.names import local_cluster_name

CONNECT_TIMEOUT_S = 5  # Kuma's default connect timeout
LOCAL_SERVICE_ADDRESS = "127.0.0.1"
HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


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


def outbound_cluster(
    service: str,
    protocol: str,
    tls: base_pb2.TransportSocket | None = None,
    max_connection_duration_s: float | None = None,
) -> cluster_pb2.Cluster:
    """`tls`: the mTLS transport socket (tls.upstream_tls) when the mesh has mTLS on, and with it
    the longest a pooled HTTP connection may live (`InboundMtls.max_connection_duration_s`)."""
    cluster = cluster_pb2.Cluster(
        name=service,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration_pb2.Duration(seconds=CONNECT_TIMEOUT_S),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_config_source()),
    )
    if tls is not None:
        cluster.transport_socket.CopyFrom(tls)
    _set_upstream_protocol(cluster, protocol, max_connection_duration_s)
    return cluster


def ads_config_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def _set_upstream_protocol(
    cluster: cluster_pb2.Cluster, protocol: str, max_connection_duration_s: float | None = None
) -> None:
    """HTTP/2 and gRPC services are called with HTTP/2; everything else keeps Envoy's default.
    HTTP connections (pooled) are closed after `max_connection_duration_s`, if given."""
    options = http_protocol_options_pb2.HttpProtocolOptions()
    if needs_http2_upstream(protocol):
        options.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
    if max_connection_duration_s is not None and is_http(protocol):
        options.common_http_protocol_options.max_connection_duration.FromMilliseconds(
            int(max_connection_duration_s * 1000)
        )
        if not options.HasField("explicit_http_config"):  # Envoy requires the protocol be named
            options.explicit_http_config.http_protocol_options.SetInParent()
    if options == http_protocol_options_pb2.HttpProtocolOptions():
        return
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].CopyFrom(pack(options))
