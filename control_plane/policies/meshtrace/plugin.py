"""MeshTrace → Envoy's HTTP tracing on every HTTP inbound and outbound of the selected proxies.

As Kuma (pkg/plugins/policies/meshtrace): each HTTP connection manager gets `tracing` with the
backend's provider (`envoy.tracers.zipkin`, `envoy.tracers.opentelemetry` over gRPC,
`envoy.tracers.datadog`), the sampling percentages that are set (Envoy's default for an unset one is
100, Kuma's too), the custom tags (literal, request header with a default) followed by
`kuma.mesh: <mesh>` unless a tag of that name is given, and `spawn_upstream_span: false` (a
sidecar's span stands for its hop). Inbound listeners make server spans, outbound ones client
spans (the listener's traffic direction). The collector is one cluster, `meshtrace:<provider>`
(collector.py).

The service name spans carry: Zipkin takes it from Envoy's node cluster (the service, set by the
bootstrap), so Zipkin config is the same for every proxy and a mesh-wide MeshTrace keeps one shared
outbound build; OpenTelemetry and Datadog name it in the config, so their outbound builds are shared
by the proxies of one service (`outbound_per_caller`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from envoy.config.core.v3 import grpc_service_pb2
from envoy.config.trace.v3 import datadog_pb2, http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.tracing.v3 import custom_tag_pb2
from pydantic import ValidationError

from control_plane.policies.core.fields import decimal_of
from control_plane.policies.core.parts import ChainParts, InboundParts, OutboundParts, ProxyResources
from control_plane.policies.core.rules import InboundPolicy, MergedConf, caller_service
from control_plane.policies.meshtrace.api import DATADOG, DEFAULT_ZIPKIN_PATH, OPEN_TELEMETRY, Backend, Conf
from control_plane.policies.meshtrace.collector import collector_cluster, collector_cluster_name
from control_plane.xds.generate.pack import pack
from control_plane.xds.names import CLUSTER_TYPE

MESH_TAG = "kuma.mesh"
ZIPKIN_TRACER = "envoy.tracers.zipkin"
OTEL_TRACER = "envoy.tracers.opentelemetry"
DATADOG_TRACER = "envoy.tracers.datadog"


def apply_inbound(policy: InboundPolicy, parts: InboundParts) -> None:
    merged = policy.catch_all
    if merged is None:
        return
    conf: Conf = merged.parsed(Conf)
    backend = conf.backend
    if backend is None:
        return
    service = caller_service(parts.dataplane)
    tracing = _tracing(conf, backend, parts.mesh, _service_name(backend, service, "INBOUND", ""))
    for chain in parts.chains:
        _set_tracing(chain, tracing)


def apply_outbound(merged: MergedConf, parts: OutboundParts) -> None:
    conf: Conf = merged.parsed(Conf)
    backend = conf.backend
    if backend is None or parts.chain.hcm is None:
        return
    # Builds may be shared by proxies of several meshes' services only within one mesh: the mesh
    # tag is the same for every proxy of the build (MeshPolicies are per mesh).
    mesh = merged.origins[0].mesh
    name = _service_name(backend, parts.caller, "OUTBOUND", parts.service)
    _set_tracing(parts.chain, _tracing(conf, backend, mesh, name))


def apply_proxy(merged: MergedConf, resources: ProxyResources) -> None:
    """The collector's cluster, beside the listeners that send to it."""
    backend = merged.parsed(Conf).backend
    if backend is not None:
        cluster = collector_cluster(backend)
        resources.put(CLUSTER_TYPE, cluster.name, cluster)


def per_caller(merged: MergedConf) -> bool:
    """Whether the outbound config names the calling service (OpenTelemetry, Datadog). A merge
    the model refuses is not applied at all (the engine warns then): nothing to name."""
    try:
        backend = merged.parsed(Conf).backend
    except ValidationError:
        return False
    return backend is not None and backend.type in (OPEN_TELEMETRY, DATADOG)


def _set_tracing(chain: ChainParts, tracing: hcm.HttpConnectionManager.Tracing) -> None:
    if chain.hcm is not None:
        chain.hcm.tracing.CopyFrom(tracing)


def _tracing(conf: Conf, backend: Backend, mesh: str, service: str) -> hcm.HttpConnectionManager.Tracing:
    tracing = hcm.HttpConnectionManager.Tracing()
    tracing.spawn_upstream_span.value = False
    sampling = conf.sampling
    if sampling is not None:
        for field in ("overall", "client", "random"):
            value = getattr(sampling, field)
            if value is not None:
                getattr(tracing, f"{field}_sampling").value = float(decimal_of(value))
    for tag in conf.tags or ():
        custom = tracing.custom_tags.add(tag=tag.name)
        if tag.header is not None:
            custom.request_header.name = tag.header.name
            custom.request_header.default_value = tag.header.default or ""
        else:
            custom.literal.value = tag.literal or ""
    if not any(t.name == MESH_TAG for t in conf.tags or ()):
        tracing.custom_tags.append(custom_tag_pb2.CustomTag(tag=MESH_TAG, literal={"value": mesh}))
    tracing.provider.CopyFrom(_provider(backend, service))
    return tracing


def _provider(backend: Backend, service: str) -> http_tracer_pb2.Tracing.Http:
    cluster = collector_cluster_name(backend)
    if backend.zipkin is not None:
        zipkin = backend.zipkin
        url = urlsplit(zipkin.url)
        config = zipkin_pb2.ZipkinConfig(
            collector_cluster=cluster,
            collector_endpoint=url.path or DEFAULT_ZIPKIN_PATH,
            trace_id_128bit=bool(zipkin.traceId128bit),
            collector_endpoint_version=(
                zipkin_pb2.ZipkinConfig.HTTP_PROTO
                if zipkin.apiVersion == "httpProto"
                else zipkin_pb2.ZipkinConfig.HTTP_JSON
            ),
            collector_hostname=url.netloc,
        )
        config.shared_span_context.value = zipkin.sharedSpanContext is not False  # default true
        return http_tracer_pb2.Tracing.Http(name=ZIPKIN_TRACER, typed_config=pack(config))
    if backend.openTelemetry is not None:
        otel = opentelemetry_pb2.OpenTelemetryConfig(
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster)
            ),
            service_name=service,
        )
        return http_tracer_pb2.Tracing.Http(name=OTEL_TRACER, typed_config=pack(otel))
    assert backend.datadog is not None
    datadog = datadog_pb2.DatadogConfig(collector_cluster=cluster, service_name=service)
    return http_tracer_pb2.Tracing.Http(name=DATADOG_TRACER, typed_config=pack(datadog))


def _service_name(backend: Backend, service: str, direction: str, destination: str) -> str:
    """What the spans are named by: the proxy's service; Datadog's `splitService` adds the
    direction and, outbound, the destination (`web_INBOUND`, `web_OUTBOUND_backend`)."""
    if backend.datadog is not None and backend.datadog.splitService:
        return "_".join(part for part in (service, direction, destination) if part)
    return service
