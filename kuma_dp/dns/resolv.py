"""The upstream resolvers: the `nameserver` lines of /etc/resolv.conf, read once when the agent starts.

Read at start, before the DNS redirection takes effect for the workload, and never again: a
resolv.conf rewritten later (by DHCP, or by an installer pointing it at us) must not make the agent
forward to itself. Pure apart from `read_resolv_conf`.

Loopback entries are kept (127.0.0.53, systemd-resolved's stub, is a real resolver, and the agent's
own queries are not redirected: the iptables rules exempt the proxy's UID, which the agent runs as),
except one that is this server itself: 127.0.0.1 or ::1 when it listens on port 53.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("dns")

DNS_PORT = 53
MAX_NAMESERVERS = 3  # glibc's MAXNS: further lines are ignored by every resolver


@dataclass(frozen=True)
class Upstream:
    host: str  # an IP address (IPv6 with its %scope when link-local)
    port: int = DNS_PORT

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def describe(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_resolv_conf(text: str, listen_port: int) -> list[Upstream]:
    """The usable nameservers in order (at most 3), without this server itself."""
    found: list[Upstream] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        host = _address(fields[1])
        if host is None or _is_self(host, listen_port):
            continue
        upstream = Upstream(host)
        if upstream not in found:
            found.append(upstream)
        if len(found) == MAX_NAMESERVERS:
            break
    return found


def read_resolv_conf(path: Path, listen_port: int) -> list[Upstream]:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        log.debug("cannot read %s: %s", path, exc)
        return []
    return parse_resolv_conf(text, listen_port)


def _address(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.is_unspecified:  # 0.0.0.0 / :: mean this host to the resolver library
        return "127.0.0.1" if address.version == 4 else "::1"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return text if isinstance(address, ipaddress.IPv6Address) and address.scope_id else str(address)


def _is_self(host: str, listen_port: int) -> bool:
    return listen_port == DNS_PORT and host in ("127.0.0.1", "::1")
