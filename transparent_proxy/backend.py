"""Which iptables backend (legacy or nft) the current network namespace's nat table uses.

The two backends keep separate rule sets in the kernel; rules added through the wrong one are
ignored by whoever manages the other (and vice versa), so we follow what is already there:
rules only in nft → nft; only in legacy → legacy; in both → nft, with a warning; in neither →
the system's default `iptables`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

LEGACY = "legacy"
NFT = "nft"
DEFAULT = "default"
BACKENDS = (LEGACY, NFT)


@dataclass(frozen=True)
class Backend:
    name: str  # legacy, nft, or default (the system's `iptables`, whichever that is)

    def tool(self, ipv6: bool, suffix: str) -> str:
        """`iptables-nft-restore`, `ip6tables-legacy-save`, `iptables-restore`, ..."""
        base = "ip6tables" if ipv6 else "iptables"
        middle = "" if self.name == DEFAULT else f"-{self.name}"
        return f"{base}{middle}-{suffix}" if suffix else f"{base}{middle}"

    @property
    def is_nft(self) -> bool:
        return self.name == NFT or (self.name == DEFAULT and default_is_nft())


def default_is_nft() -> bool:
    try:
        out = subprocess.run(["iptables", "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "nf_tables" in out


def _nat_has_rules(tool: str) -> bool:
    if shutil.which(tool) is None:
        return False
    try:
        result = subprocess.run([tool, "-t", "nat"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.startswith("-A ") for line in result.stdout.splitlines())


def detect(warn: Callable[[str], None] = lambda _msg: None) -> Backend:
    """Look at both backends' nat tables (IPv4 and IPv6) in this namespace."""
    used = [
        name
        for name in BACKENDS
        if _nat_has_rules(Backend(name).tool(False, "save"))
        or _nat_has_rules(Backend(name).tool(True, "save"))
    ]
    if used == [LEGACY, NFT]:
        warn("both iptables-legacy and iptables-nft hold nat rules in this namespace; using nft")
        return Backend(NFT)
    return Backend(used[0]) if used else Backend(DEFAULT)
