"""Network-namespace helpers (netlink, no `ip` subprocess): enter, read, add `::6`.

Everything here acts on the namespace of the calling process; `enter` moves the whole process,
so call it in a process made for that (a forked child, an init container, a CNI plugin).
pyroute2 is imported on first use: it costs ~110-140 ms, which `kumactl get ...` should not pay,
nor the CNI plugin on every pod: the install path (`enter`, `ipv6_enabled`, `ensure_loopback_ipv6`)
needs only setns(2), /proc/self/net and one netlink message, done here without it.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from transparent_proxy import constants as c


def _pyroute2() -> Any:
    import pyroute2
    import pyroute2.netns

    return pyroute2


def IPRoute() -> Any:  # noqa: N802 - stands in for the class
    return _pyroute2().IPRoute()


@dataclass(frozen=True)
class Address:
    ifname: str
    family: int  # socket.AF_INET or socket.AF_INET6
    address: str
    prefixlen: int
    scope: int


CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"
IF_INET6 = "/proc/self/net/if_inet6"  # follows the namespace this (single-threaded) process is in
IPV6_ADDR_LOOPBACK = 0x10  # if_inet6's scope column for ::1


def enter(netns: str) -> None:
    """Move this process into a namespace: a name under /var/run/netns or a path (/proc/PID/ns/net).

    setns(2) through libc, as pyroute2 does, without pyroute2's import cost. OSError names the path.
    """
    path = netns if netns.startswith("/") else f"{NETNS_RUN_DIR}/{netns}"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}", path)
    finally:
        os.close(fd)


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


def _inet6_lines() -> list[list[str]]:
    """/proc/self/net/if_inet6 rows: address (32 hex digits), index, prefix, scope, flags, ifname."""
    try:
        with open(IF_INET6) as f:
            return [line.split() for line in f if line.strip()]
    except FileNotFoundError:  # IPv6 disabled in the kernel
        return []


DISABLE_IPV6 = "/proc/sys/net/ipv6/conf/all/disable_ipv6"  # per namespace, like IF_INET6


def ipv6_enabled() -> bool:
    """True when this namespace's kernel side speaks IPv6 (an address can appear at any time)."""
    try:
        with open(DISABLE_IPV6) as f:
            return f.read().strip() == "0"
    except OSError:  # no IPv6 in the kernel at all
        return False


def has_ipv6() -> bool:
    """True when an IPv6 address other than loopback exists (link-local counts: it can carry traffic)."""
    return any(int(row[3], 16) != IPV6_ADDR_LOOPBACK for row in _inet6_lines())


def ensure_loopback_ipv6(address: str = c.INBOUND_PASSTHROUGH_SOURCE_V6) -> bool:
    """Add `::6/128` to lo (Envoy's inbound passthrough source); True if it was added now."""
    wanted = ipaddress.IPv6Address(address)
    present = any(
        row[5] == c.LOOPBACK_INTERFACE and ipaddress.IPv6Address(int(row[0], 16)) == wanted
        for row in _inet6_lines()
    )
    if present:
        return False
    return _netlink_add_address(socket.if_nametoindex(c.LOOPBACK_INTERFACE), wanted.packed, 128)


RTM_NEWADDR = 20
NLMSG_ERROR = 2
NLM_F_REQUEST_ACK_CREATE_EXCL = 0x1 | 0x4 | 0x200 | 0x400
IFA_ADDRESS, IFA_LOCAL = 1, 2


def _netlink_add_address(index: int, packed: bytes, prefixlen: int) -> bool:
    """One RTM_NEWADDR (what `ip addr add` sends); True if added, False if it already existed."""
    family = socket.AF_INET6 if len(packed) == 16 else socket.AF_INET
    attrs = b"".join(struct.pack("=HH", 4 + len(packed), kind) + packed for kind in (IFA_LOCAL, IFA_ADDRESS))
    body = struct.pack("=BBBBI", family, prefixlen, 0, 0, index) + attrs
    message = struct.pack("=LHHLL", 16 + len(body), RTM_NEWADDR, NLM_F_REQUEST_ACK_CREATE_EXCL, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.send(message)
        reply = sock.recv(65536)
    (kind,) = struct.unpack_from("=H", reply, 4)
    (code,) = struct.unpack_from("=i", reply, 16) if kind == NLMSG_ERROR else (0,)
    if code == -errno.EEXIST:
        return False
    if code < 0:
        raise OSError(-code, f"adding {ipaddress.ip_address(packed)}/{prefixlen}: {os.strerror(-code)}")
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
