"""MeshHTTPRoute: how calls to a service are routed, request by request (Kuma order 100)."""

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.meshhttproute.api import KIND, SECTIONS, MeshHTTPRoute
from control_plane.policies.meshhttproute.merge import merge_rules
from control_plane.policies.meshhttproute.plugin import apply_outbound

POLICY = PolicyType(
    kind=KIND,
    plural="meshhttproutes",
    model=MeshHTTPRoute,
    sections=SECTIONS,
    order=100,
    summary="HTTP routes of outbounds (`to`): matches on path, method, headers, query; weighted "
    "backends and subsets; header, redirect, rewrite and mirror filters",
    apply_outbound=apply_outbound,
    merge=merge_rules,
)
