"""The nameservers of a resolv.conf: what `--redirect-dns` (without `--redirect-all-dns-traffic`)
redirects queries for, read once at install time (Kuma's `redirect.dns.resolvConfigPath`).

Parsing is pure (`parse_nameservers`); `read_nameservers` reads the file and turns "cannot read it"
and "no nameserver in it" into one message that names the file and the way out.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path


class ResolvConfError(ValueError):
    """The resolv.conf cannot serve `--redirect-dns`; the message names the file and what to do."""


CAPTURE_ALL_HINT = "or capture every DNS query with --redirect-all-dns-traffic"
OTHER_FILE_HINT = "point redirect.dns.resolvConfigPath (--redirect-dns-resolv-config-path) at another file"


def parse_nameservers(text: str) -> tuple[str, ...]:
    """`nameserver <address>` lines, in order, without duplicates, as the resolver reads them:
    comments (`#`, `;`) and other keywords are skipped, an IPv6 zone (`fe80::1%eth0`) is dropped
    (iptables matches addresses, not scopes), a value that is not an IP address is ignored."""
    servers: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        try:
            servers.append(str(ipaddress.ip_address(words[1].split("%", 1)[0])))
        except ValueError:
            continue
    return tuple(dict.fromkeys(servers))


def read_nameservers(path: str) -> tuple[str, ...]:
    """The nameservers of the file at `path`; ResolvConfError when it cannot be read or has none."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise ResolvConfError(
            f"--redirect-dns: cannot read {path} ({exc.strerror or exc}) to find the nameservers whose "
            f"queries to redirect; {OTHER_FILE_HINT}, {CAPTURE_ALL_HINT}"
        ) from None
    servers = parse_nameservers(text)
    if not servers:
        raise ResolvConfError(
            f"--redirect-dns: {path} lists no nameserver, so there are no DNS queries to redirect; "
            f"add nameserver lines to it, {OTHER_FILE_HINT}, {CAPTURE_ALL_HINT}"
        )
    return servers
