"""The cluster Envoy sends spans to: Kuma's `meshtrace:<provider>` (zipkin, opentelemetry, datadog).

An IP address is a STATIC endpoint, a host name is resolved by Envoy (STRICT_DNS, IPv4 as Kuma);
the OpenTelemetry collector speaks gRPC (HTTP/2); a Zipkin `https://` URL gets TLS with the host
as SNI. Connect timeout: Kuma's 5 s.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import duration_pb2

from control_plane.policies.core.parts import http_protocol_options, set_http_protocol_options
from control_plane.policies.meshtrace.api import Backend, otel_address
from control_plane.xds.generate.endpoints import static_load_assignment
from control_plane.xds.generate.pack import pack

CONNECT_TIMEOUT_S = 5
TLS_SOCKET = "envoy.transport_sockets.tls"
_PROVIDER = {"Zipkin": "zipkin", "OpenTelemetry": "opentelemetry", "Datadog": "datadog"}
_DEFAULT_PORT = {"http": 80, "https": 443}


def collector_cluster_name(backend: Backend) -> str:
    return f"meshtrace:{_PROVIDER[backend.type]}"


def collector_address(backend: Backend) -> tuple[str, int]:
    if backend.openTelemetry is not None:
        return otel_address(backend.openTelemetry.endpoint)
    url = urlsplit(backend.zipkin.url if backend.zipkin is not None else backend.datadog.url)  # type: ignore[union-attr]
    assert url.hostname is not None  # validated by the model
    return url.hostname, url.port or _DEFAULT_PORT[url.scheme]


def collector_cluster(backend: Backend) -> cluster_pb2.Cluster:
    name = collector_cluster_name(backend)
    host, port = collector_address(backend)
    cluster = cluster_pb2.Cluster(
        name=name,
        connect_timeout=duration_pb2.Duration(seconds=CONNECT_TIMEOUT_S),
        load_assignment=static_load_assignment(name, host, port),
    )
    if _is_ip(host):
        cluster.type = cluster_pb2.Cluster.STATIC
    else:
        cluster.type = cluster_pb2.Cluster.STRICT_DNS
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_ONLY
    if backend.openTelemetry is not None:
        options = http_protocol_options(cluster)
        options.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
        set_http_protocol_options(cluster, options)
    if backend.zipkin is not None and urlsplit(backend.zipkin.url).scheme == "https":
        tls = tls_pb2.UpstreamTlsContext(sni=host)
        cluster.transport_socket.CopyFrom(base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(tls)))
    return cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
