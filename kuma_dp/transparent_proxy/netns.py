"""Network-namespace helpers on pyroute2 (netlink, no `ip` subprocess): enter, read, add `::6`.

Everything here acts on the namespace of the calling process; `enter` moves the whole process,
so call it in a process made for that (a forked child, an init container, a CNI plugin).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2 import netns as _netns

from kuma_dp.transparent_proxy import constants as c

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
    _netns.setns(netns)


def create(name: str) -> None:
    _netns.create(name)


def remove(name: str) -> None:
    _netns.remove(name)


def exists(name: str) -> bool:
    return name in _netns.listnetns()


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
