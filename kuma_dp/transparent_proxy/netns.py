"""Network-namespace helpers on pyroute2 (netlink, no `ip` subprocess): enter, read, add `::6`.

Everything here acts on the namespace of the calling process; `enter` moves the whole process,
so call it in a process made for that (a forked child, an init container, a CNI plugin).
pyroute2 is imported on first use: it costs ~110 ms, which `kumactl get ...` should not pay.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from kuma_dp.transparent_proxy import constants as c


def _pyroute2() -> Any:
    import pyroute2
    import pyroute2.netns

    return pyroute2


def IPRoute() -> Any:  # noqa: N802 - stands in for the class
    return _pyroute2().IPRoute()


SCOPE_HOST = 254  # RT_SCOPE_HOST: addresses only valid inside the host (loopback)


@dataclass(frozen=True)
class Address:
    ifname: str
    family: int  # socket.AF_INET or socket.AF_INET6
    address: str
    prefixlen: int
    scope: int


def enter(netns: str) -> None:
    """Move this process into a namespace: a name under /var/run/netns or a path (/proc/PID/ns/net)."""
    _pyroute2().netns.setns(netns)


def create(name: str) -> None:
    _pyroute2().netns.create(name)


def remove(name: str) -> None:
    _pyroute2().netns.remove(name)


def exists(name: str) -> bool:
    return name in _pyroute2().netns.listnetns()


def links() -> dict[int, str]:
    """Interface index → name."""
    with IPRoute() as ipr:
        return {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def addresses() -> list[Address]:
    names = links()
    with IPRoute() as ipr:
        return [
            Address(
                ifname=names.get(a["index"], str(a["index"])),
                family=a["family"],
                address=a.get_attr("IFA_ADDRESS") or a.get_attr("IFA_LOCAL"),
                prefixlen=a["prefixlen"],
                scope=a["scope"],
            )
            for a in ipr.get_addr()
        ]


def has_ipv6() -> bool:
    """True when an IPv6 address other than loopback exists (link-local counts: it can carry traffic)."""
    return any(a.family == socket.AF_INET6 and a.scope != SCOPE_HOST for a in addresses())


def ensure_loopback_ipv6(address: str = c.INBOUND_PASSTHROUGH_SOURCE_V6) -> bool:
    """Add `::6/128` to lo (Envoy's inbound passthrough source); True if it was added now."""
    present = any(a.ifname == c.LOOPBACK_INTERFACE and a.address == address for a in addresses())
    if present:
        return False
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=c.LOOPBACK_INTERFACE)
        ipr.addr("add", index=index, address=address, prefixlen=128)
    return True


def remote_probe_address() -> str | None:
    """A non-local IPv4 address that routes out of a non-loopback interface, or None.

    With a default route, TEST-NET-1's 192.0.2.1 (never a real host); otherwise another host of the
    first connected subnet. The outbound validation probe connects there; the rules must catch it
    before it leaves.
    """
    own = [a for a in addresses() if a.family == socket.AF_INET and a.ifname != c.LOOPBACK_INTERFACE]
    with IPRoute() as ipr:
        has_default = any(
            r.get_attr("RTA_DST") is None for r in ipr.get_routes(family=socket.AF_INET, table=254)
        )
    if has_default and own:
        return c.VALIDATION_REMOTE_IP
    for a in own:
        network = ipaddress.ip_network(f"{a.address}/{a.prefixlen}", strict=False)
        for host in network.hosts():
            if str(host) != a.address:
                return str(host)
    return None
