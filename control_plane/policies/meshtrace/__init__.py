"""MeshTrace: distributed tracing (Zipkin, OpenTelemetry, Datadog) of the selected proxies' HTTP
inbounds and outbounds (Kuma order 700)."""

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.meshtrace.api import KIND, SECTIONS, MeshTrace
from control_plane.policies.meshtrace.plugin import apply_inbound, apply_outbound, apply_proxy, per_caller

POLICY = PolicyType(
    kind=KIND,
    plural="meshtraces",
    model=MeshTrace,
    sections=SECTIONS,
    order=700,
    summary="distributed tracing of HTTP inbounds and outbounds: a Zipkin, OpenTelemetry (gRPC) or "
    "Datadog collector, sampling percentages and custom tags",
    apply_inbound=apply_inbound,
    apply_outbound=apply_outbound,
    apply_proxy=apply_proxy,
    outbound_per_caller=per_caller,
)
