"""How Kuma merges the confs of several policy entries: RFC 7396 JSON merge-patch, in order.

Each conf is a JSON object (the `default` of an entry, as stored: unset fields absent). Later confs
win field by field; objects merge recursively, lists and scalars are replaced, `null` removes a
field. Lists whose field name starts with `append` (Kuma's `appendModifications`, `appendProfiles`,
...) are concatenated across all confs instead of replaced.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

APPEND_PREFIX = "append"


def merge_confs(confs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The merge of `confs` (lowest priority first) as a new object; the inputs are not changed."""
    result: dict[str, Any] = {}
    for conf in confs:
        result = _merge_patch(result, conf)
    return result


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif key.startswith(APPEND_PREFIX) and isinstance(value, list):
            merged[key] = [*(merged.get(key) or []), *copy.deepcopy(value)]
        else:
            merged[key] = _merge_patch(merged.get(key), value)
    return merged
