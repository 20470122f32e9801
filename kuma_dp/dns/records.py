"""The DNS records the control plane sends (kuma_common/dp_contract.py): parsed once, looked up often.

    {"domain": "mesh", "records": [{"name": "backend.mesh", "ips": ["240.0.0.3"]}, ...]}

Pure: bytes in, a `Records` out, or RecordsError naming what is wrong. An entry with a bad name or
address is an error for the whole body (the control plane sent something this agent does not
understand: better to keep the last good records than to answer from half of the new ones).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from kuma_common import safe_json
from kuma_common.dp_contract import DNS_DOMAIN

_MAX_NAME = 253
_MAX_LABEL = 63


class RecordsError(ValueError):
    """The body is not the records the contract describes."""


@dataclass(frozen=True)
class Records:
    """Names (lower case, no trailing dot) to their IPv4 VIPs, and the mesh domain they live under."""

    domain: str = DNS_DOMAIN
    names: dict[str, tuple[ipaddress.IPv4Address, ...]] = field(default_factory=dict)
    # Every proper suffix of a name that is under the domain (`service.mesh` for `my.service.mesh`)
    # and the domain itself: such names exist (RFC 8020), so they get NOERROR, not NXDOMAIN.
    parents: frozenset[str] = frozenset()

    def lookup(self, name: str) -> tuple[ipaddress.IPv4Address, ...] | None:
        """The VIPs of a lower-case name without trailing dot; None when it is not a record."""
        return self.names.get(name)

    def in_domain(self, name: str) -> bool:
        return name == self.domain or name.endswith("." + self.domain)

    def exists(self, name: str) -> bool:
        """Whether the name or something below it is a record (else: NXDOMAIN in the domain)."""
        return name in self.names or name in self.parents


def build_records(domain: str, names: dict[str, tuple[ipaddress.IPv4Address, ...]]) -> Records:
    parents = {domain}
    for name in names:
        labels = name.split(".")
        for i in range(1, len(labels)):
            suffix = ".".join(labels[i:])
            if suffix == domain or suffix.endswith("." + domain):
                parents.add(suffix)
    return Records(domain, dict(names), frozenset(parents))


def parse_records(body: bytes) -> Records:
    """The contract's JSON body as Records (RecordsError when it does not follow the contract)."""
    try:
        document = safe_json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordsError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RecordsError("not a JSON object")
    domain = _name(document.get("domain", DNS_DOMAIN), "domain")
    entries = document.get("records", [])
    if not isinstance(entries, list):
        raise RecordsError('"records" is not a list')
    names: dict[str, tuple[ipaddress.IPv4Address, ...]] = {}
    for index, entry in enumerate(entries):
        name, ips = _entry(entry, f"records[{index}]")
        names[name] = tuple(dict.fromkeys(names.get(name, ()) + ips))  # a repeated name: the union
    return build_records(domain, names)


def _entry(entry: Any, where: str) -> tuple[str, tuple[ipaddress.IPv4Address, ...]]:
    if not isinstance(entry, dict):
        raise RecordsError(f"{where} is not an object")
    name = _name(entry.get("name"), f"{where}.name")
    ips = entry.get("ips")
    if not isinstance(ips, list):
        raise RecordsError(f"{where}.ips is not a list")
    try:
        return name, tuple(ipaddress.IPv4Address(ip) for ip in ips)
    except (ValueError, TypeError) as exc:
        raise RecordsError(f"{where}.ips: {exc}") from None


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RecordsError(f"{where} is not a string")
    name = value.lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > _MAX_NAME or any(not 0 < len(label) <= _MAX_LABEL for label in labels):
        raise RecordsError(f'{where} "{value}" is not a DNS name')
    if not name.isascii():
        raise RecordsError(f'{where} "{value}" is not ASCII')
    return name
