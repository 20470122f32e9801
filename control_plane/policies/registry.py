"""Every policy the control plane knows. Adding a policy = its folder + one line in POLICY_FOLDERS.

Each folder's package exports `POLICY`, its `PolicyType`. Plugins run in each policy's `order`
(Kuma's), whatever the order of this list.
"""

from __future__ import annotations

import importlib

from control_plane.policies.core.plugin import PolicyType

POLICY_FOLDERS = (
    "meshtrafficpermission",
    "meshhttproute",
    "meshtcproute",
    "meshtimeout",
    "meshcircuitbreaker",
    "meshretry",
    "meshhealthcheck",
    "meshloadbalancingstrategy",
    "meshratelimit",
    "meshfaultinjection",
    "meshtls",
    "meshmetric",
    "meshproxypatch",
    "meshtrace",
    "meshaccesslog",
)


def _load(folder: str) -> PolicyType:
    policy = importlib.import_module(f"{__package__}.{folder}").POLICY
    assert isinstance(policy, PolicyType), f"{folder}.POLICY is not a PolicyType"
    return policy


POLICY_TYPES: tuple[PolicyType, ...] = tuple(sorted(map(_load, POLICY_FOLDERS), key=lambda t: t.order))
BY_KIND: dict[str, PolicyType] = {t.kind: t for t in POLICY_TYPES}
