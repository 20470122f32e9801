"""Running the policy plugins over one proxy's parts, in Kuma's order.

Each entry a user applied was validated on its own; their merge can still be a conf the policy's
model refuses (two valid entries combining into something no single entry may say). Then that
kind is skipped for that inbound or outbound, with a warning naming the policies, and the rest of
the proxy's config goes out: one odd merge must not freeze a proxy's whole config.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

from pydantic import ValidationError

from control_plane.policies.core.parts import InboundParts, OutboundParts, ProxyInfo, ProxyResources
from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.core.rules import MeshPolicies, Origin, OutboundRules
from control_plane.policies.registry import POLICY_TYPES
from control_plane.resources.dataplane import Dataplane

log = logging.getLogger(__name__)

_INBOUND = [t for t in POLICY_TYPES if t.apply_inbound is not None]
_OUTBOUND = [t for t in POLICY_TYPES if t.apply_outbound is not None]
_PROXY = [t for t in POLICY_TYPES if t.apply_proxy is not None]
PER_PROXY_OUTBOUND = {t.kind: t.outbound_per_proxy for t in POLICY_TYPES if t.outbound_per_proxy}


def apply_inbound_policies(policies: MeshPolicies, parts: InboundParts) -> None:
    for policy_type in _INBOUND:
        assert policy_type.apply_inbound is not None
        policy = policies.inbound_policy(policy_type, parts.dataplane, parts.inbound)
        origins = [*(e.origin for e in policy.from_entries), *(r.origin for r in policy.rules)]
        where = f"inbound {parts.inbound.port} of {parts.dataplane.mesh}/{parts.dataplane.name}"
        with _skipped_if_invalid(policy_type, origins, where):
            policy_type.apply_inbound(policy, parts)


def apply_outbound_policies(rules: OutboundRules, parts: OutboundParts) -> None:
    for policy_type in _OUTBOUND:
        conf = rules.conf(policy_type.kind, parts.service)
        if conf is not None:
            assert policy_type.apply_outbound is not None
            with _skipped_if_invalid(policy_type, conf.origins, f"calls to {parts.service}"):
                policy_type.apply_outbound(conf, parts)


def apply_proxy_policies(
    policies: MeshPolicies, dataplane: Dataplane, resources: dict, workdir: str | None = None
) -> None:
    """The whole-proxy plugins (MeshMetric, MeshProxyPatch), last, on the proxy's finished config."""
    for policy_type in _PROXY:
        conf = policies.proxy_conf(policy_type, dataplane)
        if conf is not None:
            assert policy_type.apply_proxy is not None
            with _skipped_if_invalid(policy_type, conf.origins, f"{dataplane.mesh}/{dataplane.name}"):
                policy_type.apply_proxy(conf, ProxyResources(resources, ProxyInfo.of(dataplane, workdir)))


@contextlib.contextmanager
def _skipped_if_invalid(policy_type: PolicyType, origins: Iterable[Origin], where: str) -> Iterator[None]:
    """A merged conf the policy's model refuses skips the plugin (plugins parse before they edit)."""
    try:
        yield
    except ValidationError as exc:
        log.warning(
            "%s for %s not applied: the merge of policies %s is not a valid conf (%s); "
            "see kumactl inspect dataplane --type=rules",
            policy_type.kind,
            where,
            ", ".join(dict.fromkeys(o.name for o in origins)),
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()),
        )
