"""Virtual IPs of a mesh's services: which service holds which address, and how that changes.

Pure logic; `control_plane/dns/allocator.py` reads and writes the table in the store. Rules:
- a service keeps its address for as long as it has an instance, and for `grace` after its last
  one is gone (a redeploy or a reboot keeps the address clients resolved), then it is released;
- new services take the next free address after the last one handed out (wrapping around), so a
  released address is not handed to another service while clients may still cache it;
- an address outside the configured range (the range was changed) is replaced.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# The store record of a mesh's table: Kuma's name (`kuma-<mesh>-dns-vips`), an internal type.
VIPS_TYPE = "DnsVips"


def vips_record_name(mesh: str) -> str:
    return f"kuma-{mesh}-dns-vips"


@dataclass(frozen=True)
class VipEntry:
    ip: str
    release_after: datetime | None = None  # set while the service has no instance


@dataclass(frozen=True)
class VipTable:
    entries: Mapping[str, VipEntry] = field(default_factory=dict)  # service → its address
    cursor: str | None = None  # the last address handed out: the search for a free one starts after it

    def ips(self) -> dict[str, str]:
        """service → VIP, services in their grace period included (their names still resolve)."""
        return {service: entry.ip for service, entry in sorted(self.entries.items())}

    def to_spec(self) -> dict[str, Any]:
        vips: dict[str, Any] = {}
        for service, entry in sorted(self.entries.items()):
            vips[service] = {"ip": entry.ip}
            if entry.release_after is not None:
                vips[service]["releaseAfter"] = rfc3339(entry.release_after)
        spec: dict[str, Any] = {"vips": vips}
        if self.cursor is not None:
            spec["cursor"] = self.cursor
        return spec

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> VipTable:
        """The table of a stored record; ValueError naming the entry if it is not one of ours."""
        raw = spec.get("vips", {})
        if not isinstance(raw, dict):
            raise ValueError("`vips` is not a mapping")
        entries = {}
        for service, item in raw.items():
            if not isinstance(item, dict) or not isinstance(item.get("ip"), str):
                raise ValueError(f"entry {service!r} has no `ip`")
            ipaddress.IPv4Address(item["ip"])
            release = item.get("releaseAfter")
            entries[service] = VipEntry(item["ip"], _parse_time(release) if release else None)
        cursor = spec.get("cursor")
        return cls(entries, cursor if isinstance(cursor, str) else None)


@dataclass(frozen=True)
class Allocation:
    table: VipTable
    unallocated: list[str]  # services that got no address: the range is full
    next_release: datetime | None  # when an entry's grace period ends next (a pass is due then)


def allocate(
    table: VipTable,
    services: Iterable[str],
    cidr: ipaddress.IPv4Network,
    now: datetime,
    grace: timedelta,
) -> Allocation:
    """The table after one pass: `services` are those with an instance now."""
    present = set(services)
    entries: dict[str, VipEntry] = {}
    for service, entry in table.entries.items():
        if ipaddress.IPv4Address(entry.ip) not in cidr:
            continue
        if service in present:
            entries[service] = VipEntry(entry.ip)
            continue
        release_after = entry.release_after or now + grace
        if release_after > now:
            entries[service] = VipEntry(entry.ip, release_after)
    free = _FreeAddresses(cidr, {e.ip for e in entries.values()}, table.cursor)
    unallocated = []
    for service in sorted(present - entries.keys()):
        ip = free.take()
        if ip is None:
            unallocated.append(service)
        else:
            entries[service] = VipEntry(ip)
    releases = [e.release_after for e in entries.values() if e.release_after is not None]
    new_table = VipTable(dict(sorted(entries.items())), free.cursor)
    return Allocation(new_table, unallocated, min(releases, default=None))


class _FreeAddresses:
    """The range's host addresses not taken, in order from after `cursor`, wrapping around."""

    def __init__(self, cidr: ipaddress.IPv4Network, taken: set[str], cursor: str | None) -> None:
        self._first = int(cidr.network_address) + 1
        self._last = int(cidr.broadcast_address) - 1
        self._taken = {int(ipaddress.IPv4Address(ip)) for ip in taken}
        start = self._first - 1
        if cursor is not None:
            try:
                at = int(ipaddress.IPv4Address(cursor))
            except ValueError:
                at = start
            start = at if self._first <= at <= self._last else start
        self._at = start
        self.cursor = cursor

    def take(self) -> str | None:
        size = self._last - self._first + 1
        if len(self._taken) >= size:
            return None
        candidate = self._at
        while True:  # terminates: at least one address in the range is free
            candidate = candidate + 1 if candidate < self._last else self._first
            if candidate not in self._taken:
                break
        self._taken.add(candidate)
        self._at = candidate
        self.cursor = str(ipaddress.IPv4Address(candidate))
        return self.cursor


def rfc3339(moment: datetime) -> str:
    """As the store's timestamps: UTC, milliseconds, `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
