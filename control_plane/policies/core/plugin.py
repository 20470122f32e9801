"""The plugin protocol: what a policy tells the engine about itself.

A policy folder defines one `PolicyType` and the registry lists it; nothing else in the control
plane names a particular policy. The API, kumactl, validation, the rules inspector, the initial
policies of a new mesh and the docs tables are all driven by these fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.policies.core.parts import InboundParts, OutboundParts, ProxyResources
from control_plane.policies.core.rules import InboundPolicy, Merge, MergedConf
from control_plane.policies.core.spec import PolicyResource, Sections

# (the merged `to` conf for one outbound service, that outbound's parts) → None (edits parts)
OutboundApply = Callable[[MergedConf, OutboundParts], None]
# (what applies to one inbound: `from` entries and `rules`, maybe none, its parts) → None
InboundApply = Callable[[InboundPolicy, InboundParts], None]
# (a single-item kind's merged `default` for the proxy, all its config) → None (applied last)
ProxyApply = Callable[[MergedConf, ProxyResources], None]


@dataclass(frozen=True)
class InitialPolicy:
    """A policy Kuma creates with every new Mesh: `<name_prefix>-<mesh>` with this spec."""

    name_prefix: str
    spec: Mapping[str, Any]

    def name(self, mesh: str) -> str:
        return f"{self.name_prefix}-{mesh}"


@dataclass(frozen=True)
class PolicyType:
    kind: str  # the resource `type`, e.g. "MeshTimeout"
    plural: str  # the API path segment, e.g. "meshtimeouts"
    model: type[PolicyResource]
    sections: Sections
    order: int  # Kuma's plugin order: plugins run by increasing order
    summary: str  # one line for `docs/policies.md` and `kumactl`
    # Kuma's `is_from_as_rules`: `from` entries count as rules without matches (whatever their
    # targetRef), so they merge with `rules` into one conf for all incoming traffic.
    from_as_rules: bool = False
    # A single-item kind's apply_outbound gets its merged `default` for every outbound (the shared
    # outbound build is keyed by the policies it merges), its apply_inbound the same `default`
    # as the `catch_all` of every inbound: the kind shapes each inbound and outbound, not only the
    # finished proxy.
    apply_outbound: OutboundApply | None = None
    # True for the confs whose outbound config names the proxy itself (`OutboundParts.proxy`): a
    # proxy such a conf applies to gets its own outbound build instead of the one its likes share.
    outbound_per_proxy: Callable[[MergedConf], bool] | None = None
    # Called for every inbound of a proxy (with an empty InboundPolicy when nothing applies), so a
    # policy can have a default (MeshTrafficPermission: deny everyone when mTLS is on).
    apply_inbound: InboundApply | None = None
    # Applied after the inbound and outbound plugins, to the proxy's whole config (single-item kinds).
    apply_proxy: ProxyApply | None = None
    initial: InitialPolicy | None = None
    # How this kind's confs combine, when Kuma's merge-patch is not it (MeshHTTPRoute merges its
    # rules by their matches); confs come lowest priority first.
    merge: Merge | None = None
    # A single-item kind whose outbound edits depend on the calling service for some confs (a
    # tracer's service name): True for those confs; the outbound build is then shared only by the
    # proxies of one service, and `OutboundParts.caller` names it.
    outbound_per_caller: Callable[[MergedConf], bool] | None = None
