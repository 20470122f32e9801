"""A proxy's resources of one type as a base shared by many proxies plus the proxy's own.

A transparent proxy holds one outbound listener per endpoint of its mesh: all but a few of its
resources are the same objects as every other proxy's. An Overlay is a plain dict of everything
(so anything reading resources works unchanged) that also remembers how it was made, so the cache
packs and hashes the shared base once per mesh change instead of once per proxy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf.message import Message


class Overlay(dict[str, Message]):
    """`base` without `removed`, then `own` on top (a name in both is the proxy's own)."""

    def __init__(
        self, base: Mapping[str, Message], own: Mapping[str, Message], removed: Iterable[str]
    ) -> None:
        super().__init__(base)
        for name in removed:
            super().pop(name, None)
        self.base = base  # the very object other proxies share: the cache keys on its identity
        self.removed = frozenset(name for name in removed if name in base)
        self.own = dict(own)
        super().update(own)

    # Later changes (a policy applied to the whole proxy) stay the proxy's own: the base is shared.
    def __setitem__(self, name: str, message: Message) -> None:
        super().__setitem__(name, message)
        self.own[name] = message

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self.own.pop(name, None)
        if name in self.base:
            self.removed = self.removed | {name}
