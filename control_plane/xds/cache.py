"""Versioned per-node snapshots: what each proxy should have, per xDS type, content-hashed.

Each message is serialized once (deterministically) into a `google.protobuf.Any`; a type's version
is a hash of its serialized resources, so a rebuild that yields the same config keeps the same
version and is never pushed again. Watchers are called when a node's snapshot changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import Message

from control_plane.xds.generate import Resources
from control_plane.xds.names import SERVED_TYPES

Watcher = Callable[[], None]


@dataclass(frozen=True)
class TypeSnapshot:
    version: str
    resources: Mapping[str, any_pb2.Any]  # name → packed message, ordered by name

    def select(self, names: Collection[str] | None) -> list[any_pb2.Any]:
        """The resources asked for by name, or all of them for `None` (a wildcard request)."""
        if names is None:
            return list(self.resources.values())
        return [packed for name, packed in self.resources.items() if name in names]


@dataclass(frozen=True)
class Snapshot:
    types: Mapping[str, TypeSnapshot]

    def get(self, type_url: str) -> TypeSnapshot | None:
        return self.types.get(type_url)

    def versions(self) -> dict[str, str]:
        return {type_url: t.version for type_url, t in self.types.items()}


class Packer:
    """Serializes each message object once, however many snapshots share it (e.g. one service's
    load assignment in every proxy of a mesh). Keep one per rebuild pass: it holds the messages."""

    def __init__(self) -> None:
        self._packed: dict[int, tuple[Message, any_pb2.Any]] = {}

    def pack(self, type_url: str, message: Message) -> any_pb2.Any:
        hit = self._packed.get(id(message))
        if hit is not None:
            return hit[1]
        packed = any_pb2.Any(type_url=type_url, value=message.SerializeToString(deterministic=True))
        self._packed[id(message)] = (message, packed)
        return packed


def build_snapshot(resources: Resources, packer: Packer | None = None) -> Snapshot:
    """Pack and version every served type; a type the generator left out is served empty."""
    packer = packer or Packer()
    types = {}
    for type_url in SERVED_TYPES:
        named = resources.get(type_url, {})
        packed = {name: packer.pack(type_url, named[name]) for name in sorted(named)}
        types[type_url] = TypeSnapshot(_version(packed), packed)
    return Snapshot(types)


def _version(packed: Mapping[str, any_pb2.Any]) -> str:
    digest = hashlib.sha256()
    for name, item in packed.items():
        for part in (name.encode(), item.value):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()[:16]


@dataclass
class SnapshotCache:
    """node id → Snapshot. Not thread-safe: use it from the event loop that runs the ADS server."""

    _snapshots: dict[str, Snapshot] = field(default_factory=dict)
    _watchers: dict[str, list[Watcher]] = field(default_factory=dict)

    def get(self, node_id: str) -> Snapshot | None:
        return self._snapshots.get(node_id)

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> bool:
        """Store the snapshot; notify watchers and return True only if some version changed."""
        old = self._snapshots.get(node_id)
        if old is not None and old.versions() == snapshot.versions():
            return False
        self._snapshots[node_id] = snapshot
        self._notify(node_id)
        return True

    def clear(self, node_id: str) -> None:
        """Forget a node's snapshot; its proxy keeps what it has and gets nothing new."""
        self._snapshots.pop(node_id, None)

    def node_ids(self) -> list[str]:
        return sorted(self._snapshots)

    def watch(self, node_id: str, watcher: Watcher) -> Callable[[], None]:
        """Call `watcher()` whenever the node's snapshot changes; returns the function to stop."""
        self._watchers.setdefault(node_id, []).append(watcher)

        def cancel() -> None:
            watchers = self._watchers.get(node_id, [])
            if watcher in watchers:
                watchers.remove(watcher)
            if not watchers:
                self._watchers.pop(node_id, None)

        return cancel

    def _notify(self, node_id: str) -> None:
        for watcher in list(self._watchers.get(node_id, [])):
            watcher()
