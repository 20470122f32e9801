"""MeshAccessLog: access logs of inbound and outbound traffic to files or TCP collectors (Kuma
order 600)."""

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.meshaccesslog.api import KIND, SECTIONS, MeshAccessLog
from control_plane.policies.meshaccesslog.plugin import apply_inbound, apply_outbound, names_proxy

POLICY = PolicyType(
    kind=KIND,
    plural="meshaccesslogs",
    model=MeshAccessLog,
    sections=SECTIONS,
    order=600,
    summary="access logs of requests and connections, into inbounds (`from`, `rules`) and outbounds "
    "(`to`), to a file or a TCP collector (through kuma-dp), in Kuma's or your Plain or Json format",
    from_as_rules=True,
    apply_outbound=apply_outbound,
    apply_inbound=apply_inbound,
    outbound_per_proxy=names_proxy,
)
