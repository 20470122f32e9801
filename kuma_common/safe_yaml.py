"""YAML from outside, with limits: document size, nesting depth, aliases and their expansion.

PyYAML resolves an alias to the node it names without copying it, so a few hundred bytes of
"billion laughs" (`b: [*a, *a, ...]`, nine levels deep) load quickly into a small object graph
that becomes gigabytes as soon as it is serialised (stored, sent, printed). Every YAML entry point
that takes outside input (API bodies, `kumactl apply -f`, the agent's Dataplane file, the
control-plane config file) loads through here: the composed node graph is measured *as if every
alias were expanded* before any Python object is built, and nesting is bounded while composing
(PyYAML's composer recurses: 100,000 `[` would end in RecursionError).

Errors are `YamlLimitError` (a `yaml.YAMLError`, so existing handlers report it) whose message
names the limit that was exceeded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode


@dataclass(frozen=True)
class YamlLimits:
    max_bytes: int = 1024 * 1024  # one resource or config file; far above any real one
    max_depth: int = 64  # nested mappings/sequences; Kuma's deepest policy needs ~15
    max_aliases: int = 1000  # `*name` references in one document
    max_nodes: int = 100_000  # scalars + collections once every alias is expanded


DEFAULT_LIMITS = YamlLimits()


class YamlLimitError(yaml.YAMLError):
    """The text exceeds one of the limits; `problem` names it (as PyYAML's own errors do)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = None
        self.context = None


def _limited_loader(limits: YamlLimits) -> type[yaml.SafeLoader]:
    class LimitedLoader(yaml.SafeLoader):
        _depth = 0
        _aliases = 0

        def compose_node(self, parent: Node | None, index: object) -> Node | None:  # type: ignore[override]
            if self.check_event(yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > limits.max_aliases:
                    raise YamlLimitError(
                        f"the document uses more than {limits.max_aliases} aliases (limit: max aliases)"
                    )
                return super().compose_node(parent, index)
            self._depth += 1
            if self._depth > limits.max_depth:
                raise YamlLimitError(
                    f"the document nests deeper than {limits.max_depth} levels (limit: max depth)"
                )
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return LimitedLoader


def expanded_size(node: Node) -> int:
    """How many nodes the document has once every alias is replaced by a copy of its target.

    Shared nodes are measured once (memo by identity), so this is linear in the composed graph
    however large the expansion is. A cycle (a recursive alias) counts as unbounded."""
    memo: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(n: Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        if key in in_progress:
            return 1 << 62
        in_progress.add(key)
        total = 1
        if isinstance(n, SequenceNode):
            total += sum(size(child) for child in n.value)
        elif isinstance(n, MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        in_progress.discard(key)
        memo[key] = total
        return total

    return size(node)


def _check_size(text: str | bytes, limits: YamlLimits) -> None:
    size = len(text.encode("utf-8")) if isinstance(text, str) else len(text)
    if size > limits.max_bytes:
        raise YamlLimitError(
            f"the document is {size} bytes, more than {limits.max_bytes} (limit: max document size)"
        )


def iter_nodes(text: str, limits: YamlLimits = DEFAULT_LIMITS) -> Iterator[tuple[Node, Any]]:
    """Each non-empty document's (root node, constructed value), limits checked before construction."""
    _check_size(text, limits)
    loader = _limited_loader(limits)(text)
    try:
        while loader.check_node():
            loader._aliases = 0  # per document
            node = loader.get_node()
            if node is None:
                continue
            expanded = expanded_size(node)
            if expanded > limits.max_nodes:
                raise YamlLimitError(
                    f"the document expands to more than {limits.max_nodes} nodes once its aliases "
                    "are resolved (limit: max expanded nodes)"
                )
            yield node, loader.construct_document(node)
    except RecursionError:
        raise YamlLimitError(f"the document nests too deeply (limit: max depth {limits.max_depth})") from None
    finally:
        loader.dispose()


def safe_load_all(text: str | bytes, limits: YamlLimits = DEFAULT_LIMITS) -> list[Any]:
    """Every document (None for an empty one is skipped)."""
    _check_size(text, limits)
    decoded = text.decode("utf-8") if isinstance(text, bytes) else text
    return [value for _, value in iter_nodes(decoded, limits) if value is not None]


def safe_load(text: str | bytes, limits: YamlLimits = DEFAULT_LIMITS) -> Any:
    """The one document of `text` (None if empty); a second document is a YAML error, as in PyYAML."""
    documents = safe_load_all(text, limits)
    if len(documents) > 1:
        raise YamlLimitError("expected a single document but found several (separated by ---)")
    return documents[0] if documents else None
