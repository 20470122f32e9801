"""A MeshProxyPatch's changes to one proxy, kept apart until every modification has succeeded.

Reads go through to the proxy's resources (`ProxyResources`); a changed resource is a copy put
here, never the message `get` returned (it may be shared with other proxies). `commit` then hands
the changes to `ProxyResources` (`put` / `remove`): one modification that cannot be applied leaves
the proxy's config as the other policies made it, not half patched.
"""

from __future__ import annotations

from google.protobuf.message import Message

from control_plane.policies.core.parts import ProxyResources
from control_plane.policies.meshproxypatch.origins import MESH_PROXY_PATCH


class Staged:
    def __init__(self, resources: ProxyResources) -> None:
        self._resources = resources
        self._changes: dict[str, dict[str, Message | None]] = {}  # None: removed
        self._added: dict[str, set[str]] = {}

    def names(self, type_url: str) -> list[str]:
        changes = self._changes.get(type_url, {})
        names = set(self._resources.names(type_url)) | set(changes)
        return sorted(name for name in names if changes.get(name, True) is not None)

    def get(self, type_url: str, name: str) -> Message | None:
        """The resource (not to be changed: `put` a changed copy)."""
        changes = self._changes.get(type_url, {})
        if name in changes:
            return changes[name]
        return self._resources.get(type_url, name)

    def put(self, type_url: str, name: str, message: Message) -> None:
        self._changes.setdefault(type_url, {})[name] = message

    def add(self, type_url: str, name: str, message: Message) -> None:
        """A resource the patch adds (its origin is `mesh-proxy-patch`)."""
        self.put(type_url, name, message)
        self._added.setdefault(type_url, set()).add(name)

    def remove(self, type_url: str, name: str) -> None:
        self._changes.setdefault(type_url, {})[name] = None
        self._added.get(type_url, set()).discard(name)

    def added_origin(self, type_url: str, name: str) -> str | None:
        return MESH_PROXY_PATCH if name in self._added.get(type_url, ()) else None

    def commit(self) -> None:
        for type_url, changes in self._changes.items():
            for name, message in changes.items():
                if message is None:
                    self._resources.remove(type_url, name)
                else:
                    self._resources.put(type_url, name, message)
