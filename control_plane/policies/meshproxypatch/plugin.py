"""MeshProxyPatch → the proxy's finished config, after every other policy (Kuma order 9999).

The merged `appendModifications` (every selecting policy's, lowest priority first: Kuma's order)
are applied one after the other, each seeing what the previous ones did (one may patch a cluster
an earlier one added). What they change is staged and committed only when all succeeded: a
modification that cannot be applied to this proxy (a JSON patch whose path is not there, a merge of
filters of different types, a result that is no longer a valid Envoy message) leaves the proxy's
config as the other policies made it, with a warning naming the policies and the modification.
Kuma fails the proxy's whole config generation then; a no-op modification (nothing matches) is
fine in both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from control_plane.policies.core.parts import ProxyResources
from control_plane.policies.core.rules import MergedConf
from control_plane.policies.meshproxypatch.api import Conf
from control_plane.policies.meshproxypatch.envoy_json import EnvoyJsonError
from control_plane.policies.meshproxypatch.filters import (
    modify_http_filters,
    modify_network_filters,
    modify_virtual_hosts,
)
from control_plane.policies.meshproxypatch.jsonpatch import PatchError
from control_plane.policies.meshproxypatch.origins import INBOUND, listener_origin
from control_plane.policies.meshproxypatch.resources import modify_clusters, modify_listeners
from control_plane.policies.meshproxypatch.staged import Staged
from control_plane.xds.names import LISTENER_TYPE

log = logging.getLogger(__name__)

MODIFY: dict[str, Callable[[Any, Staged], None]] = {
    "cluster": modify_clusters,
    "listener": modify_listeners,
    "networkFilter": modify_network_filters,
    "httpFilter": modify_http_filters,
    "virtualHost": modify_virtual_hosts,
}


def apply_proxy(merged: MergedConf, resources: ProxyResources) -> None:
    conf: Conf = merged.parsed(Conf)
    staged = Staged(resources)
    for index, modification in enumerate(conf.appendModifications):
        try:
            MODIFY[modification.kind](modification.mod, staged)
        except (PatchError, EnvoyJsonError) as exc:
            log.warning(
                "MeshProxyPatch %s not applied to the proxy of %s: appendModifications[%d].%s: %s",
                ", ".join(dict.fromkeys(o.name for o in merged.origins)),
                _proxy_hint(resources),
                index,
                modification.kind,
                exc,
            )
            return
    staged.commit()


def _proxy_hint(resources: ProxyResources) -> str:
    """Which proxy (the engine does not say): its first inbound listener names its address."""
    names = resources.names(LISTENER_TYPE)
    inbound = [n for n in names if listener_origin(n) == INBOUND]
    return (inbound or names or ["no listener"])[0]
