"""How MeshHTTPRoute confs combine (Kuma's `mergeValuesByKey` on `rules`, keyed by `matches`):
rules with the same matches merge field by field, the higher priority winning; other rules are
kept side by side, the higher priority's first (the plugin then orders routes by precedence)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from control_plane.policies.core.merge import merge_confs


def merge_rules(confs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`confs` lowest priority first, each `{"rules": [...]}` of one `to` entry."""
    defaults: dict[str, list[Mapping[str, Any]]] = {}  # matches (canonical JSON) → defaults, highest first
    for conf in reversed(list(confs)):
        for rule in conf.get("rules") or []:
            key = json.dumps(rule.get("matches"), sort_keys=True, separators=(",", ":"))
            defaults.setdefault(key, []).append(rule.get("default") or {})
    rules = [
        {"matches": json.loads(key), "default": merge_confs(reversed(found))}
        for key, found in defaults.items()
    ]
    return {"rules": rules}
