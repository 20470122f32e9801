"""Running the policy plugins over one proxy's parts, in Kuma's order."""

from __future__ import annotations

from control_plane.policies.core.parts import InboundParts, OutboundParts
from control_plane.policies.core.rules import MeshPolicies, OutboundRules
from control_plane.policies.registry import POLICY_TYPES

_INBOUND = [t for t in POLICY_TYPES if t.apply_inbound is not None]
_OUTBOUND = [t for t in POLICY_TYPES if t.apply_outbound is not None]


def apply_inbound_policies(policies: MeshPolicies, parts: InboundParts) -> None:
    for policy_type in _INBOUND:
        assert policy_type.apply_inbound is not None
        policy_type.apply_inbound(policies.inbound_policy(policy_type, parts.dataplane, parts.inbound), parts)


def apply_outbound_policies(rules: OutboundRules, parts: OutboundParts) -> None:
    for policy_type in _OUTBOUND:
        conf = rules.conf(policy_type.kind, parts.service)
        if conf is not None:
            assert policy_type.apply_outbound is not None
            policy_type.apply_outbound(conf, parts)
