"""The outbounds of one build, with the policies that shape calls to them applied.

A build is a proxy's explicit outbounds, or the mesh-wide set every transparent proxy selecting
the same policies shares. Policies see every outbound of the build (a route's backends are other
services); a backend the build lacks is added as a cluster only (no listener), so a route to a
service the proxy did not declare still has somewhere to go.
"""

from __future__ import annotations

from collections.abc import Callable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2

from control_plane.policies.core.parts import OutboundParts
from control_plane.policies.core.rules import OutboundRules
from control_plane.xds.generate.clusters import outbound_cluster
from control_plane.xds.generate.listeners import assemble_chain, outbound_chain_parts
from control_plane.xds.generate.policies import apply_outbound_policies


class OutboundBuild:
    """Fresh messages: builds may be shared between proxies with the same `rules`, never edited
    once built."""

    def __init__(self, protocol_of: Callable[[str], str], rules: OutboundRules) -> None:
        self._protocol_of = protocol_of
        self._rules = rules
        self._parts: dict[str, OutboundParts] = {}
        self._chain_names: dict[str, str] = {}  # the services with a chain (a listener) → its name
        self._applied = False

    def add(self, service: str, stats_name: str, chain_name: str = "") -> None:
        """An outbound with a chain (calls to `service` arrive through a listener)."""
        if service not in self._parts:
            protocol = self._protocol_of(service)
            chain = outbound_chain_parts(stats_name, service, protocol)
            self._parts[service] = OutboundParts(
                service,
                protocol,
                chain,
                outbound_cluster(service, protocol),
                self,
                self._rules.caller,
                proxy=self._rules.proxy,
            )
            self._chain_names[service] = chain_name

    def get(self, service: str) -> OutboundParts | None:
        return self._parts.get(service)

    def require(self, service: str) -> OutboundParts:
        found = self._parts.get(service)
        if found is None:
            protocol = self._protocol_of(service)
            found = OutboundParts(
                service,
                protocol,
                outbound_chain_parts(service, service, protocol),
                outbound_cluster(service, protocol),
                self,
                self._rules.caller,
                proxy=self._rules.proxy,
            )
            self._parts[service] = found
            if self._applied:  # required by a policy while applying: it gets its own policies now
                apply_outbound_policies(self._rules, found)
        return found

    def apply(self) -> OutboundBuild:
        """Every policy on every outbound of the build (once)."""
        if not self._applied:
            self._applied = True
            for parts in list(self._parts.values()):
                apply_outbound_policies(self._rules, parts)
        return self

    def chains(self) -> dict[str, listener_components_pb2.FilterChain]:
        """service → its assembled chain, for the services added with one."""
        return {s: assemble_chain(self._parts[s].chain, name) for s, name in self._chain_names.items()}

    def clusters(self) -> dict[str, cluster_pb2.Cluster]:
        """service → its cluster, for every service of the build (required ones too)."""
        return {service: parts.cluster for service, parts in self._parts.items()}

    @property
    def protocols(self) -> dict[str, str]:
        return {service: parts.protocol for service, parts in self._parts.items()}
