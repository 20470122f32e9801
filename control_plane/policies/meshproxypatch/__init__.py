"""MeshProxyPatch: changes to the proxy's finished Envoy config, last of all (Kuma order 9999)."""

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.meshproxypatch.api import KIND, SECTIONS, MeshProxyPatch
from control_plane.policies.meshproxypatch.plugin import apply_proxy

POLICY = PolicyType(
    kind=KIND,
    plural="meshproxypatches",
    model=MeshProxyPatch,
    sections=SECTIONS,
    order=9999,
    summary="adds, removes or patches the proxy's Envoy clusters, listeners, network and HTTP filters "
    "and virtual hosts (`appendModifications`), after every other policy",
    apply_proxy=apply_proxy,
)
