"""MeshMetric: every proxy serves its Envoy's and its application's metrics on one port (Kuma
order 1500); the agent merges them (kuma_dp/metrics/), the control plane lists the endpoints for
Prometheus (control_plane/monitoring/)."""

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.meshmetric.api import KIND, SECTIONS, MeshMetric
from control_plane.policies.meshmetric.plugin import apply_proxy

POLICY = PolicyType(
    kind=KIND,
    plural="meshmetrics",
    model=MeshMetric,
    sections=SECTIONS,
    order=1500,
    summary="a Prometheus endpoint per proxy (`backends`) serving Envoy's stats, filtered by profiles, "
    "merged with the application's own metrics (`applications`); listed for Prometheus on port 5676",
    apply_proxy=apply_proxy,
)
