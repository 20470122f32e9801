"""RFC 6902 JSON Patch with the options Kuma applies MeshProxyPatch's `jsonPatches` with.

Operations `add`, `remove`, `replace`, `move` and `copy` (Kuma's validator refuses `test`) on JSON
documents (dicts, lists, scalars). Kuma's options (evanphx/json-patch `ApplyOptions`):
- `add` creates missing parents (an Envoy message's JSON omits unset fields, so
  `/circuitBreakers/thresholds/0/maxConnections` must be addable to a cluster that has none yet):
  an array when the next token is an index (`0`, `-`), else an object; an array index past the end
  is filled with nulls up to it;
- `remove` of a path that is not there does nothing;
- negative array indices count from the end (`-1` is the last element).
The document given is never changed: `apply_patch` returns a new one. Why not a PyPI package:
`jsonpatch` (the usual one) has neither the first nor the last option, and this is ~100 lines.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any


class PatchError(ValueError):
    """A patch operation cannot be applied to the document (the message says which and why)."""


def parse_pointer(pointer: str) -> list[str]:
    """The reference tokens of an RFC 6901 JSON pointer ("" is the whole document)."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"{pointer!r} is not a JSON pointer: it must be empty or start with '/'")
    tokens = pointer[1:].split("/")
    for token in tokens:
        if "~" in token.replace("~0", "").replace("~1", ""):
            raise ValueError(f"{pointer!r} is not a JSON pointer: '~' must be followed by 0 or 1")
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def apply_patch(document: Any, operations: Iterable[Mapping[str, Any]]) -> Any:
    """`document` with `operations` ({op, path, value?, from?} each) applied in order."""
    result = copy.deepcopy(document)
    for index, operation in enumerate(operations):
        try:
            result = _apply(result, operation)
        except PatchError as exc:
            raise PatchError(f"jsonPatches[{index}] ({operation['op']} {operation['path']}): {exc}") from None
    return result


def _apply(doc: Any, operation: Mapping[str, Any]) -> Any:
    op, path = operation["op"], parse_pointer(operation["path"])
    if op == "add":
        return _add(doc, path, copy.deepcopy(operation["value"]), create=True)
    if op == "remove":
        if path and _exists(doc, path):
            _remove(doc, path)
        return doc
    if op == "replace":
        if not path:
            return copy.deepcopy(operation["value"])
        if not _exists(doc, path):
            raise PatchError("the path does not exist")
        parent, token = _parent(doc, path, create=False), path[-1]
        key = token if isinstance(parent, dict) else _index(parent, token, allow_end=False)
        parent[key] = copy.deepcopy(operation["value"])
        return doc
    source = parse_pointer(operation["from"])
    if not _exists(doc, source):
        raise PatchError(f"'from' {operation['from']} does not exist")
    value = copy.deepcopy(_get(doc, source))
    if op == "move":
        if path[: len(source)] == source and len(path) > len(source):
            raise PatchError("cannot move a value into itself")
        _remove(doc, source)
    return _add(doc, path, value, create=True)


def _get(doc: Any, path: list[str]) -> Any:
    for token in path:
        if isinstance(doc, dict):
            doc = doc[token]
        elif isinstance(doc, list):
            doc = doc[_index(doc, token, allow_end=False)]
        else:
            raise KeyError(token)
    return doc


def _exists(doc: Any, path: list[str]) -> bool:
    try:
        _get(doc, path)
    except (KeyError, IndexError, PatchError):
        return False
    return True


def _index(array: list[Any], token: str, *, allow_end: bool) -> int:
    """The list index `token` names; `-` (the end) and negative indices as Kuma's options allow
    (counted from the end: for an insertion, -1 is after the last element)."""
    if token == "-" and allow_end:
        return len(array)
    try:
        index = int(token)
    except ValueError:
        raise PatchError(f"{token!r} is not an array index") from None
    if index < 0:
        index += len(array) + (1 if allow_end else 0)
    if not 0 <= index <= (len(array) if allow_end else len(array) - 1):
        raise PatchError(f"array index {token} is out of range (the array has {len(array)} elements)")
    return index


def _parent(doc: Any, path: list[str], create: bool) -> Any:
    """The container holding the last token of `path` (missing objects made when `create`)."""
    node = doc
    for position, token in enumerate(path[:-1]):
        if isinstance(node, dict):
            if token not in node:
                if not create:
                    raise PatchError(f"{token!r} does not exist")
                node[token] = _container_for(path[position + 1])
            node = node[token]
        elif isinstance(node, list):
            if create and token.isdigit() and int(token) >= len(node):
                node.extend([None] * (int(token) - len(node)))
                node.append(_container_for(path[position + 1]))
            node = node[_index(node, token, allow_end=False)]
        else:
            raise PatchError(f"{token!r} is inside a value that is neither an object nor an array")
    return node


def _container_for(following: str) -> list[Any] | dict[str, Any]:
    """What a missing parent is made as: an array if the next token indexes one."""
    return [] if following == "-" or following.lstrip("-").isdigit() else {}


def _add(doc: Any, path: list[str], value: Any, *, create: bool) -> Any:
    if not path:
        return value
    parent, token = _parent(doc, path, create), path[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, token, allow_end=True), value)
    else:
        raise PatchError("the parent is neither an object nor an array")
    return doc


def _remove(doc: Any, path: list[str]) -> None:
    parent, token = _parent(doc, path, create=False), path[-1]
    if isinstance(parent, dict):
        del parent[token]
    else:
        del parent[_index(parent, token, allow_end=False)]
