"""What applies to one proxy and why: the body of `GET /meshes/{mesh}/dataplanes/{name}/_rules`.

For every policy kind with something to say about the proxy (Kuma's names):
- `toRules`: the proxy's outbounds: one rule for every service a `to` entry names (its subset is
  that service) and one for every other service (no matchers), each the merged conf and the
  policies that made it, in merge order;
- `fromRules`: per inbound, the legacy `from` entries of kinds that judge callers one by one
  (MeshTrafficPermission): a rule per group of callers (their subset as matchers) with the conf
  its entries merge to; the rule without matchers is every other caller;
- `inboundRules`: per inbound, the conf for all incoming traffic (`rules` without matches, and
  `from` entries of kinds that treat them so) merged, then each rule with matches;
- `proxyRule`: the merged top-level `default` of single-item policies.
Pure: the same MeshPolicies the generator uses, so what is shown is what is sent to Envoy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from control_plane.policies.core.rules import (
    FromEntry,
    InboundPolicy,
    MergedConf,
    MeshPolicies,
    Origin,
    OutboundPolicy,
    merged,
)
from control_plane.resources.common import SERVICE_TAG
from control_plane.resources.dataplane import Dataplane, Inbound


def dataplane_rules(policies: MeshPolicies, dataplane: Dataplane) -> dict[str, Any]:
    rules = []
    outbound = policies.outbound_rules(dataplane)
    for policy_type in policies.types:
        entry: dict[str, Any] = {"type": policy_type.kind}
        to = outbound.by_kind.get(policy_type.kind)
        if to is not None and not policy_type.sections.single_item:  # a default shows as proxyRule
            entry["toRules"] = _to_rules(to)
        proxy = policies.proxy_conf(policy_type, dataplane)
        if proxy is not None:
            entry["proxyRule"] = {"conf": dict(proxy.conf), "origin": _origins(proxy.origins)}
        if policy_type.sections.inbound:
            by_inbound = [
                (i, policies.inbound_policy(policy_type, dataplane, i)) for i in dataplane.networking.inbound
            ]
            from_rules = [
                _inbound_block(i, _from_rules(p.from_entries)) for i, p in by_inbound if p.from_entries
            ]
            inbound_rules = [_inbound_block(i, _inbound_rules(p)) for i, p in by_inbound if p.rules]
            if from_rules:
                entry["fromRules"] = from_rules
            if inbound_rules:
                entry["inboundRules"] = inbound_rules
        if len(entry) > 1:
            rules.append(entry)
    return {"resource": _resource(dataplane), "rules": rules}


def _resource(dataplane: Dataplane) -> dict[str, Any]:
    resource: dict[str, Any] = {"type": "Dataplane", "mesh": dataplane.mesh, "name": dataplane.name}
    if dataplane.labels:
        resource["labels"] = dict(dataplane.labels)
    return resource


def _rule(matchers: Mapping[str, str], conf: MergedConf) -> dict[str, Any]:
    return {
        "matchers": [{"key": k, "value": v, "not": False} for k, v in sorted(matchers.items())],
        "conf": dict(conf.conf),
        "origin": _origins(conf.origins),
    }


def _origins(origins: Iterable[Origin]) -> list[dict[str, Any]]:
    """The policies, each once, in merge order (a policy's several entries are one origin)."""
    unique = {(o.kind, o.mesh, o.name): o for o in origins}
    return [origin.document() for origin in unique.values()]


def _to_rules(policy: OutboundPolicy) -> list[dict[str, Any]]:
    rules = [_rule({SERVICE_TAG: service}, conf) for service, conf in sorted(policy.by_service.items())]
    if policy.others is not None:
        rules.append(_rule({}, policy.others))
    return rules


def _from_rules(entries: Sequence[FromEntry]) -> list[dict[str, Any]]:
    """A rule per distinct group of callers an entry names, most specific first; each merges, in
    order, the entries covering it (a group's subset holds the entry's)."""
    subsets = {tuple(sorted(e.target.subset().items())) for e in entries}
    rules = []
    for subset in sorted(subsets, key=lambda s: (-len(s), s)):
        covering = [(e.conf, e.origin) for e in entries if set(e.target.subset().items()) <= set(subset)]
        conf = merged(covering)
        if conf is not None:
            rules.append(_rule(dict(subset), conf))
    return rules


def _inbound_rules(policy: InboundPolicy) -> list[dict[str, Any]]:
    rules = []
    if policy.catch_all is not None:
        rules.append({"conf": dict(policy.catch_all.conf), "origin": _origins(policy.catch_all.origins)})
    for rule in policy.rules:
        if rule.match is not None:
            match = rule.match.model_dump(mode="json", exclude_none=True)
            rules.append({"matches": [match], "conf": dict(rule.conf), "origin": _origins([rule.origin])})
    return rules


def _inbound_block(inbound: Inbound, rules: list[dict[str, Any]]) -> dict[str, Any]:
    described: dict[str, Any] = {"port": inbound.port, "tags": dict(inbound.tags)}
    if inbound.name:
        described["name"] = inbound.name
    return {"inbound": described, "rules": rules}
