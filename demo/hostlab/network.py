"""The lab's network: a pure address plan, and the namespaces/bridge/veths that realise it.

Every "host" is a network namespace with one veth (`eth0`) whose peer sits in the bridge
namespace `kuma-lab-net`, enslaved to its bridge. Nothing is created in the root namespace, so
the lab's addresses exist only inside the namespaces it made: no route, NAT or forwarding can
reach the machine's own interfaces. Every name starts with `kuma-lab-`, so `down` finds it all
even without a state file.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

PREFIX = "kuma-lab-"
BRIDGE_NS = PREFIX + "net"
BRIDGE = "br0"
HOST_IFNAME = "eth0"
SUBNET = ipaddress.IPv4Network("10.213.0.0/24")
CP_HOST = "cp"
WEB_HOST = "web"
MAX_BACKENDS = 50
IFNAMSIZ = 15  # the kernel's limit for an interface name


class NetworkError(Exception):
    """An `ip` command failed; the message names the command and its error."""


@dataclass(frozen=True)
class HostPlan:
    name: str  # the Dataplane name too
    role: str  # "control-plane" or "workload"
    service: str  # kuma.io/service ("" for the control plane)
    address: str

    @property
    def namespace(self) -> str:
        return PREFIX + self.name

    @property
    def peer(self) -> str:
        """The veth end in the bridge namespace."""
        return ("kl-" + self.name)[:IFNAMSIZ]


def address_plan(backends: int = 1, subnet: ipaddress.IPv4Network = SUBNET) -> list[HostPlan]:
    """Control plane at .10, web at .11, backend-N at .20+N."""
    if not 1 <= backends <= MAX_BACKENDS:
        raise ValueError(f"--backends {backends}: must be between 1 and {MAX_BACKENDS}")
    base = subnet.network_address

    def at(offset: int) -> str:
        return str(base + offset)

    hosts = [HostPlan(CP_HOST, "control-plane", "", at(10)), HostPlan(WEB_HOST, "workload", "web", at(11))]
    hosts += [HostPlan(f"backend-{n}", "workload", "backend", at(20 + n)) for n in range(1, backends + 1)]
    return hosts


# --- side effects ------------------------------------------------------------------------------------


def ip(*args: str, check: bool = True) -> str:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def lab_namespaces() -> list[str]:
    """The lab's namespaces that exist now (bridge namespace last)."""
    names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    ours = [n for n in names if n.startswith(PREFIX)]
    return sorted(ours, key=lambda n: (n == BRIDGE_NS, n))


def create_bridge() -> None:
    ip("netns", "add", BRIDGE_NS)
    ip("-n", BRIDGE_NS, "link", "set", "lo", "up")
    ip("-n", BRIDGE_NS, "link", "add", BRIDGE, "type", "bridge")
    ip("-n", BRIDGE_NS, "link", "set", BRIDGE, "up")


def create_host(host: HostPlan, prefixlen: int = SUBNET.prefixlen) -> None:
    """The host's namespace, its eth0 with its address, the peer on the bridge."""
    ns = host.namespace
    ip("netns", "add", ns)
    ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", ns, "link", "add", HOST_IFNAME, "type", "veth", "peer", "name", host.peer, "netns", BRIDGE_NS)
    ip("-n", ns, "addr", "add", f"{host.address}/{prefixlen}", "dev", HOST_IFNAME)
    ip("-n", ns, "link", "set", HOST_IFNAME, "up")
    # As every VM has one: a default route, so a connection to a service's VIP reaches iptables
    # (and the proxy) instead of failing with "network unreachable". It ends on the lab's bridge.
    ip("-n", ns, "route", "add", "default", "dev", HOST_IFNAME)
    ip("-n", BRIDGE_NS, "link", "set", host.peer, "master", BRIDGE, "up")


def pids_in(namespace: str) -> list[int]:
    out = ip("netns", "pids", namespace, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def delete_namespace(namespace: str) -> None:
    ip("netns", "del", namespace, check=False)
