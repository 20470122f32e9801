"""Versioned per-node snapshots: what each proxy should have, per xDS type, content-hashed.

Each message is serialized once (deterministically) into a `google.protobuf.Any`; a type's version
is a hash of its serialized resources, so a rebuild that yields the same config keeps the same
version and is never pushed again. Watchers are called when a node's snapshot changes.
"""

from __future__ import annotations

import bisect
import hashlib
import operator
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import Message

from control_plane.xds.generate.overlay import Overlay
from control_plane.xds.generate.snapshot import Resources
from control_plane.xds.names import SERVED_TYPES

Watcher = Callable[[], None]
_NAME = operator.attrgetter("name")
_DIGEST = operator.attrgetter("digest")
_RESOURCES_FIELD_TAG = b"\x12"  # DiscoveryResponse.resources: field 2, length-delimited


@dataclass(frozen=True)
class TypeSnapshot:
    """One type's resources: `base` (name-ordered; for a transparent proxy, the mesh-wide part
    every proxy of the mesh shares, the same object) without `removed`, with `own` on top. A
    proxy keeps only its own part, not a copy of the mesh (one entry per endpoint)."""

    version: str
    base: Mapping[str, Packed]
    own: Mapping[str, Packed] = field(default_factory=dict)
    removed: frozenset[str] = frozenset()  # names of `base` the proxy does not get

    @property
    def entries(self) -> dict[str, Packed]:
        """name → packed resource, ordered by name."""
        names, entries = self._ordered()
        return dict(zip(names, entries, strict=True))

    @property
    def resources(self) -> dict[str, any_pb2.Any]:
        """name → packed message, ordered by name."""
        return {name: entry.packed for name, entry in self.entries.items()}

    def select(self, names: Collection[str] | None) -> list[Packed]:
        """The resources asked for by name, or all of them for `None` (a wildcard request), in
        name order."""
        ordered_names, entries = self._ordered()
        if names is None:
            return entries
        return [entry for name, entry in zip(ordered_names, entries, strict=True) if name in names]

    def _ordered(self) -> tuple[list[str], list[Packed]]:
        """(names, entries) in name order: copies of the base's lists, edited where the proxy's
        few own and removed names fall (found by bisection)."""
        names, entries = list(self.base), list(self.base.values())
        for name in self.removed:
            i = bisect.bisect_left(names, name)
            if i < len(names) and names[i] == name:
                del names[i], entries[i]
        for name, entry in self.own.items():
            i = bisect.bisect_left(names, name)
            if i < len(names) and names[i] == name:
                entries[i] = entry
            else:
                names.insert(i, name)
                entries.insert(i, entry)
        return names, entries


@dataclass(frozen=True)
class Snapshot:
    types: Mapping[str, TypeSnapshot]

    def get(self, type_url: str) -> TypeSnapshot | None:
        return self.types.get(type_url)

    def versions(self) -> dict[str, str]:
        return {type_url: t.version for type_url, t in self.types.items()}


class Packer:
    """Serializes each message object once, however many snapshots share it (e.g. one service's
    load assignment in every proxy of a mesh), and gives them all the same Packed object. It
    holds every message it packed: keep one as long as the messages it shares live (a rebuild
    pass, or a mesh's unchanged state), and watch `size`."""

    def __init__(self) -> None:
        self._packed: dict[int, Packed] = {}  # id(message) → its Packed
        self._held: list[Message] = []  # every packed message, held so that its id stays unique
        # id(overlay base) → (the base, held), its entries and digest
        self._bases: dict[int, tuple[Mapping[str, Message], dict[str, Packed], bytes]] = {}

    @property
    def size(self) -> int:
        return len(self._packed)

    def pack_named(self, type_url: str, named: Mapping[str, Message]) -> TypeSnapshot:
        """Every message of `named` packed, ordered by name, and versioned."""
        if isinstance(named, Overlay):
            return self._pack_overlay(type_url, named)
        entries = self._entries(type_url, named)
        return TypeSnapshot(_version(_digest(entries.values())), entries)

    def _entries(self, type_url: str, named: Mapping[str, Message]) -> dict[str, Packed]:
        """name → Packed in name order. Whole-list operations: a big mesh's proxy has thousands."""
        names = sorted(named)
        messages = list(map(named.__getitem__, names))
        if not self._packed.keys() >= set(map(id, messages)):  # the few new ones (a proxy's own)
            for name, message in named.items():
                if id(message) not in self._packed:
                    self._add(type_url, name, message)
        entries: list[Packed] = list(map(self._packed.__getitem__, map(id, messages)))
        if list(map(_NAME, entries)) != names:  # one message under two names: pack it per name
            entries = [
                e if e.name == n else _pack(type_url, n, m)
                for e, n, m in zip(entries, names, messages, strict=True)
            ]
        return dict(zip(names, entries, strict=True))

    def _pack_overlay(self, type_url: str, named: Overlay) -> TypeSnapshot:
        """The shared base is packed and hashed once; each proxy adds only its own part. The
        version hashes (base, removed names, own resources): equal content, equal version."""
        base_entries, base_digest = self._base(type_url, named.base)
        own = self._entries(type_url, named.own)
        removed = named.removed  # names the base has (Overlay keeps only those)
        version = _version(
            b"overlay",
            base_digest,
            _length_prefixed("\0".join(sorted(removed)).encode()),
            _digest(own.values()),
        )
        return TypeSnapshot(version, base_entries, own, removed)

    def _base(self, type_url: str, base: Mapping[str, Message]) -> tuple[dict[str, Packed], bytes]:
        hit = self._bases.get(id(base))
        if hit is None:
            entries = self._entries(type_url, base)
            hit = self._bases[id(base)] = (base, entries, _digest(entries.values()))
        return hit[1], hit[2]

    def _add(self, type_url: str, name: str, message: Message) -> None:
        self._packed[id(message)] = _pack(type_url, name, message)
        self._held.append(message)


def _digest(entries: Iterable[Packed]) -> bytes:
    return hashlib.sha256(b"".join(map(_DIGEST, entries))).digest()


def _version(*parts: bytes) -> str:
    return hashlib.sha256(b"".join(parts)).hexdigest()[:16]


def _pack(type_url: str, name: str, message: Message) -> Packed:
    return Packed(name, any_pb2.Any(type_url=type_url, value=message.SerializeToString(deterministic=True)))


class Packed:
    """A packed resource, made once and shared by every snapshot that holds it, with
    - `digest` (of its length-prefixed name and value): a version hashes its resources' digests,
      so a proxy's version costs 32 bytes per resource, not its whole config (every proxy of a
      big transparent mesh carries hundreds of kilobytes of listeners);
    - `field`: its bytes as one entry of `DiscoveryResponse.resources`, so a response is a join
      of bytes, not a message of copies serialized again for every proxy."""

    __slots__ = ("digest", "field", "name", "packed")

    def __init__(self, name: str, packed: any_pb2.Any) -> None:
        self.name, self.packed = name, packed
        self.digest = hashlib.sha256(
            _length_prefixed(name.encode()) + _length_prefixed(packed.value)
        ).digest()
        body = packed.SerializeToString(deterministic=True)
        self.field = _RESOURCES_FIELD_TAG + _varint(len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_prefixed(part: bytes) -> bytes:
    return len(part).to_bytes(8, "big") + part


def build_snapshot(resources: Resources, packer: Packer | None = None) -> Snapshot:
    """Pack and version every served type; a type the generator left out is served empty.
    A type's version is a hash of its resources' names and serialized values, in name order:
    equal content, equal version, whoever built it."""
    packer = packer or Packer()
    return Snapshot({t: packer.pack_named(t, resources.get(t, {})) for t in SERVED_TYPES})


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
