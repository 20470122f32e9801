"""Pure builder: a TProxyConfig → Kuma's iptables rules, as `iptables-restore` text.

Rules are written in the exact form `iptables-save` prints them back (both the legacy and the nft
backend: `-s/-d/-i/-o/-p` first, explicit `-m tcp`/`-m udp`, the comment just before the target),
so verifying an install is a plain comparison of lines. Nothing here runs a process.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from transparent_proxy import constants as c
from transparent_proxy.config import PortRange, TProxyConfig

MULTIPORT_MAX = 15  # iptables' multiport limit; a range counts twice


@dataclass(frozen=True)
class Rule:
    chain: str
    spec: str  # matches, comment and target, without the chain
    insert: bool = False  # -I at the top of a built-in chain (in order) instead of -A

    @property
    def saved(self) -> str:
        """The line `iptables-save` prints for this rule."""
        return f"-A {self.chain} {self.spec}"


@dataclass(frozen=True)
class TableRules:
    table: str
    chains: tuple[str, ...]  # user-defined chains this table declares
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Family:
    ipv6: bool

    @property
    def name(self) -> str:
        return "IPv6" if self.ipv6 else "IPv4"

    @property
    def localhost(self) -> str:
        return f"{c.LOCALHOST_V6}/128" if self.ipv6 else f"{c.LOCALHOST_V4}/32"

    @property
    def passthrough_source(self) -> str:
        return (
            f"{c.INBOUND_PASSTHROUGH_SOURCE_V6}/128" if self.ipv6 else f"{c.INBOUND_PASSTHROUGH_SOURCE_V4}/32"
        )

    def own(self, cidrs: Iterable[str]) -> list[str]:
        """The CIDRs of this family, written as iptables-save prints them (with a prefix length)."""
        version = 6 if self.ipv6 else 4
        return [str(n) for n in map(ipaddress.ip_network, cidrs) if n.version == version]


IPV4 = Family(ipv6=False)
IPV6 = Family(ipv6=True)


def _r(chain: str, matches: str, comment: str, target: str, insert: bool = False) -> Rule:
    text = f'{matches} -m comment --comment "{c.COMMENT_PREFIX}{comment}" -j {target}'
    return Rule(chain, text.strip(), insert)


def _ports(ports: PortRange) -> str:
    lo, hi = ports
    return str(lo) if lo == hi else f"{lo}:{hi}"


def _uid(uids: tuple[int, int]) -> str:
    lo, hi = uids
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _multiport_groups(ports: Sequence[PortRange]) -> list[str]:
    """Comma lists of at most MULTIPORT_MAX slots (a range takes two)."""
    groups: list[list[str]] = [[]]
    used = 0
    for item in ports:
        cost = 1 if item[0] == item[1] else 2
        if used + cost > MULTIPORT_MAX:
            groups.append([])
            used = 0
        groups[-1].append(_ports(item))
        used += cost
    return [",".join(g) for g in groups if g]


# --- nat ----------------------------------------------------------------------------------------------


def _output_top(config: TProxyConfig, fam: Family, nameservers: Sequence[str]) -> list[Rule]:
    """RETURN rules ahead of everything in OUTPUT: excluded IPs, per-UID ports, DNS capture."""
    rules = [
        _r("OUTPUT", f"-d {ip}", f"skip outbound traffic to excluded address {ip}", "RETURN", True)
        for ip in fam.own(config.exclude_outbound_ips)
    ]
    for excl in config.exclude_outbound_ports_for_uids:
        port_matches = [f"-m multiport --dports {g}" for g in _multiport_groups(excl.ports)] or [""]
        for proto in excl.protocols:
            for ports in port_matches:
                for uids in excl.uids:
                    owner = f"-m owner --uid-owner {_uid(uids)}"
                    what = f"skip {proto} traffic of UIDs {_uid(uids)}" + (
                        f" to ports {ports.rsplit(' ', 1)[-1]}" if ports else ""
                    )
                    rules.append(
                        _r("OUTPUT", f"-p {proto} {ports} {owner}".replace("  ", " "), what, "RETURN", True)
                    )
    return rules + _dns_redirects(config, fam, nameservers)


def dns_servers(config: TProxyConfig, fam: Family, nameservers: Sequence[str]) -> list[str] | None:
    """Where this family's DNS capture applies: None = no capture, [] = every address (captureAll),
    else the resolv.conf nameservers of this family (none of them: no capture in this family)."""
    if not config.redirect_dns:
        return None
    if config.dns_capture_all:
        return []
    return fam.own(nameservers) or None


def _dns_redirects(config: TProxyConfig, fam: Family, nameservers: Sequence[str]) -> list[Rule]:
    """The proxy user's own queries go out untouched (they are the DNS proxy's forwards to the real
    resolvers, a local one included); the others', UDP and TCP, go to the DNS proxy: all of them, or
    only those addressed to a nameserver."""
    servers = dns_servers(config, fam, nameservers)
    if servers is None:
        return []
    uid, dns, port = config.proxy_uid, c.DNS_PORT, config.dns_port
    rules = [
        _r(
            "OUTPUT",
            f"-p {proto} -m {proto} --dport {dns} -m owner --uid-owner {uid}",
            f"skip {proto.upper()} DNS queries of the proxy user (UID {uid})",
            "RETURN",
            True,
        )
        for proto in ("udp", "tcp")
    ]
    for server in servers or [""]:
        dest = f"-d {server} " if server else ""
        for proto in ("udp", "tcp"):
            what = f"{proto.upper()} DNS queries for the nameserver {server}" if server else None
            rules.append(
                _r(
                    "OUTPUT",
                    f"{dest}-p {proto} -m {proto} --dport {dns}",
                    f"redirect {what or f'all {proto.upper()} DNS queries'} to the DNS proxy on port {port}",
                    f"REDIRECT --to-ports {port}",
                    True,
                )
            )
    return rules


def _inbound_chain(config: TProxyConfig, fam: Family) -> list[Rule]:
    chain = c.CHAIN_INBOUND
    rules = [
        _r(chain, f"-s {ip}", f"skip inbound traffic from excluded address {ip}", "RETURN")
        for ip in fam.own(config.exclude_inbound_ips)
    ]
    rules += [
        _r(
            chain,
            f"-p tcp -m tcp --dport {_ports(p)}",
            f"skip inbound traffic to excluded port {_ports(p)}",
            "RETURN",
        )
        for p in config.exclude_inbound_ports
    ]
    rules.append(
        _r(chain, "-p tcp", "redirect inbound TCP traffic to the inbound listener", c.CHAIN_INBOUND_REDIRECT)
    )
    return rules


def _outbound_chain(config: TProxyConfig, fam: Family) -> list[Rule]:
    chain, uid, lo = c.CHAIN_OUTBOUND, config.proxy_uid, c.LOOPBACK_INTERFACE
    rules = [
        _r(
            chain,
            f"-p tcp -m tcp --dport {_ports(p)}",
            f"skip outbound traffic to excluded port {_ports(p)}",
            "RETURN",
        )
        for p in config.exclude_outbound_ports
    ]
    rules += [
        _r(
            chain,
            f"-s {fam.passthrough_source} -o {lo}",
            "skip inbound passthrough traffic of the proxy to the local application",
            "RETURN",
        ),
        _r(
            chain,
            f"! -d {fam.localhost} -o {lo} -p tcp -m owner --uid-owner {uid}",
            f"send traffic of the proxy user (UID {uid}) to local addresses through the inbound listener",
            c.CHAIN_INBOUND_REDIRECT,
        ),
        _r(
            chain,
            f"-o {lo} -p tcp -m owner ! --uid-owner {uid}",
            f"skip local traffic of other users than the proxy (UID {uid})",
            "RETURN",
        ),
        _r(
            chain,
            f"-m owner --uid-owner {uid}",
            f"skip the own traffic of the proxy user (UID {uid})",
            "RETURN",
        ),
    ]
    rules += [
        _r(chain, f"-d {fam.localhost}", "skip traffic to localhost", "RETURN"),
        _r(chain, "", "redirect outbound TCP traffic to the outbound listener", c.CHAIN_OUTBOUND_REDIRECT),
    ]
    return rules


def nat_table(config: TProxyConfig, fam: Family, nameservers: Sequence[str] = ()) -> TableRules:
    inbound, outbound = config.inbound_port, config.outbound_port
    rules = [
        _r("PREROUTING", "-p tcp", f"send inbound TCP traffic to {c.CHAIN_INBOUND}", c.CHAIN_INBOUND),
        *_output_top(config, fam, nameservers),
        _r("OUTPUT", "-p tcp", f"send outbound TCP traffic to {c.CHAIN_OUTBOUND}", c.CHAIN_OUTBOUND),
        *_inbound_chain(config, fam),
        *_outbound_chain(config, fam),
        _r(
            c.CHAIN_INBOUND_REDIRECT,
            "-p tcp",
            f"redirect to the inbound listener on port {inbound}",
            f"REDIRECT --to-ports {inbound}",
        ),
        _r(
            c.CHAIN_OUTBOUND_REDIRECT,
            "-p tcp",
            f"redirect to the outbound listener on port {outbound}",
            f"REDIRECT --to-ports {outbound}",
        ),
    ]
    chains = (c.CHAIN_INBOUND, c.CHAIN_INBOUND_REDIRECT, c.CHAIN_OUTBOUND, c.CHAIN_OUTBOUND_REDIRECT)
    return TableRules("nat", chains, tuple(rules))


# --- raw (DNS conntrack zones) and mangle (invalid packets) ---------------------------------------------


def raw_table(config: TProxyConfig, fam: Family, servers: Sequence[str]) -> TableRules:
    """Conntrack zones (Kuma's split): the proxy user's queries and the answers to them in zone 1,
    the application's queries and the DNS proxy's answers to them in zone 2, so the two flows of one
    lookup never share a conntrack entry. `servers`: as `dns_servers` ([] = every address)."""
    uid, dns, zp, za = config.proxy_uid, c.DNS_PORT, c.DNS_CT_ZONE_PROXY, c.DNS_CT_ZONE_APP
    output = [
        _r(
            "OUTPUT",
            f"-p udp -m udp --dport {dns} -m owner --uid-owner {uid}",
            f"conntrack zone {zp} for DNS queries of the proxy user (UID {uid})",
            f"CT --zone {zp}",
        ),
        _r(
            "OUTPUT",
            f"-p udp -m udp --sport {config.dns_port} -m owner --uid-owner {uid}",
            f"conntrack zone {za} for answers of the DNS proxy",
            f"CT --zone {za}",
        ),
    ]
    prerouting = []
    for server in servers or [""]:
        dest, src = (f"-d {server} ", f"-s {server} ") if server else ("", "")
        of, to = (f" of {server}", f" to {server}") if server else ("", "")
        output.append(
            _r(
                "OUTPUT",
                f"{dest}-p udp -m udp --dport {dns}",
                f"conntrack zone {za} for DNS queries of the application{to}",
                f"CT --zone {za}",
            )
        )
        if server and ipaddress.ip_network(server).network_address.is_loopback:
            # A local resolver answers through OUTPUT, where no rule above knows its answers.
            output.append(
                _r(
                    "OUTPUT",
                    f"-s {server} -d {fam.localhost} -p udp",
                    f"conntrack zone {zp} for DNS responses of the local resolver {server}",
                    f"CT --zone {zp}",
                )
            )
        prerouting.append(
            _r(
                "PREROUTING",
                f"{src}-p udp -m udp --sport {dns}",
                f"conntrack zone {zp} for DNS responses{of}",
                f"CT --zone {zp}",
            )
        )
    return TableRules("raw", (), (*prerouting, *output))


def mangle_table() -> TableRules:
    rule = _r("PREROUTING", "-m conntrack --ctstate INVALID", "drop packets conntrack finds invalid", "DROP")
    return TableRules("mangle", (), (rule,))


def build(config: TProxyConfig, fam: Family, nameservers: Sequence[str] = ()) -> tuple[TableRules, ...]:
    """Every table the config needs for one IP family, in a stable order. `nameservers`: the
    resolv.conf's, both families mixed (used by `--redirect-dns` without capturing everything)."""
    tables = [nat_table(config, fam, nameservers)]
    servers = dns_servers(config, fam, nameservers)
    if servers is not None and not config.skip_dns_conntrack_zone_split:
        tables.append(raw_table(config, fam, servers))
    if config.drop_invalid_packets:
        tables.append(mangle_table())
    return tuple(tables)


# --- iptables-restore text -------------------------------------------------------------------------------


def render_table(table: TableRules, removal: Sequence[str] = ()) -> str:
    """`*table`, the removal lines (if reinstalling), chain declarations, rules, `COMMIT`."""
    lines = [f"*{table.table}", *removal, *(f":{chain} - [0:0]" for chain in table.chains)]
    positions: dict[str, int] = {}
    for rule in table.rules:
        if rule.insert:
            positions[rule.chain] = positions.get(rule.chain, 0) + 1
            lines.append(f"-I {rule.chain} {positions[rule.chain]} {rule.spec}")
        else:
            lines.append(rule.saved)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render(tables: Sequence[TableRules]) -> str:
    return "".join(render_table(t) for t in tables)
