"""The transparent-proxy configuration: one frozen model, and the parsers of every value in it.

Values arrive as text from flags, environment, a YAML file or pod annotations (see `sources.py`);
each is parsed here, and every error names where the bad value came from and the value itself.
"""

from __future__ import annotations

import ipaddress
import pwd
from collections.abc import Callable
from dataclasses import dataclass

from transparent_proxy import constants as c

PortRange = tuple[int, int]  # inclusive; a single port is (p, p)
IdRange = tuple[int, int]
MAX_ID = 2**32 - 2  # the largest valid UID ((uid_t)-1 means "no change")


class TProxyConfigError(ValueError):
    """A value the user gave is wrong; the message names the flag/key/annotation and the value."""


@dataclass(frozen=True)
class UidPortExclusion:
    """`--exclude-outbound-ports-for-uids proto:ports:uids`: these UIDs reach these ports directly."""

    protocols: tuple[str, ...]  # ("tcp",), ("udp",) or both
    ports: tuple[PortRange, ...]  # empty = every port
    uids: tuple[IdRange, ...]


@dataclass(frozen=True)
class TProxyConfig:
    inbound_port: int = c.REDIRECT_PORT_INBOUND
    outbound_port: int = c.REDIRECT_PORT_OUTBOUND
    proxy_uid: int = c.DEFAULT_PROXY_UID
    ip_family_mode: str = c.IP_FAMILY_DUALSTACK
    exclude_inbound_ports: tuple[PortRange, ...] = ()
    exclude_outbound_ports: tuple[PortRange, ...] = ()
    exclude_inbound_ips: tuple[str, ...] = ()  # normalized CIDRs, both families mixed
    exclude_outbound_ips: tuple[str, ...] = ()
    exclude_outbound_ports_for_uids: tuple[UidPortExclusion, ...] = ()
    redirect_dns: bool = False  # Kuma's redirect.dns.enabled: queries to the resolv.conf nameservers
    dns_capture_all: bool = False  # Kuma's redirect.dns.captureAll: every port-53 query (implies the above)
    dns_port: int = c.DNS_PROXY_PORT
    resolv_config_path: str = c.DEFAULT_RESOLV_CONFIG_PATH
    skip_dns_conntrack_zone_split: bool = False
    drop_invalid_packets: bool = False
    wait_s: int = c.XTABLES_WAIT_S

    def __post_init__(self) -> None:
        if self.dns_capture_all and not self.redirect_dns:  # Kuma: captureAll turns DNS redirection on
            object.__setattr__(self, "redirect_dns", True)


# --- value parsers: text in, typed value out, TProxyConfigError naming `where` otherwise -------------


def _bad(where: str, value: object, why: str) -> TProxyConfigError:
    return TProxyConfigError(f'{where}: invalid value "{value}": {why}')


def parse_port(value: object, where: str) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise _bad(where, value, "not a port number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise _bad(where, value, "port out of range 1-65535")
    return port


def _parse_range(text: str, parse_one: Callable[[str], int], why: str) -> tuple[int, int]:
    """`80` or `80-90` → (80, 80) / (80, 90); ValueError(why) when malformed."""
    lo_text, sep, hi_text = text.partition("-")
    lo = parse_one(lo_text)
    hi = parse_one(hi_text) if sep else lo
    if hi < lo:
        raise ValueError(f"{why} (range {text} ends before it starts)")
    return lo, hi


def _port_number(text: str) -> int:
    text = text.strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError
    return int(text)


def _id_number(text: str) -> int:
    text = text.strip()
    if not text.isdigit() or int(text) > MAX_ID:
        raise ValueError
    return int(text)


def _items(value: object) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def parse_port_list(value: object, where: str) -> tuple[PortRange, ...]:
    """`22,80-90` (or a YAML list) → ((22, 22), (80, 90))."""
    ranges: list[PortRange] = []
    for item in _items(value):
        try:
            ranges.append(_parse_range(item, _port_number, "bad range"))
        except ValueError:
            raise _bad(where, value, f'"{item}" is not a port or a port range (1-65535)') from None
    return tuple(dict.fromkeys(ranges))


def parse_cidr_list(value: object, where: str) -> tuple[str, ...]:
    """IPs and CIDRs, IPv4 and IPv6 mixed; host bits must be zero (as iptables would silently drop them)."""
    nets: list[str] = []
    for item in _items(value):
        try:
            nets.append(str(ipaddress.ip_network(item, strict=True)))
        except ValueError as exc:
            raise _bad(where, value, f'"{item}" is not an IP address or CIDR ({exc})') from None
    return tuple(dict.fromkeys(nets))


def parse_seconds(value: object, where: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) > 3600:
        raise _bad(where, value, "expected whole seconds (0-3600)")
    return int(text)


def parse_bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on", "enabled"):
        return True
    if text in ("false", "0", "no", "off", "disabled", ""):
        return False
    raise _bad(where, value, "expected true or false")


def parse_ip_family_mode(value: object, where: str) -> str:
    text = str(value).strip().lower()
    if text not in c.IP_FAMILY_MODES:
        raise _bad(where, value, f"expected one of {', '.join(c.IP_FAMILY_MODES)}")
    return text


def parse_path(value: object, where: str) -> str:
    text = str(value).strip()
    if not text or "\0" in text:
        raise _bad(where, value, "expected a file path")
    return text


def parse_user(value: object, where: str) -> int:
    """A user name or a numeric UID → the UID (Kuma's `--kuma-dp-user`)."""
    text = str(value).strip()
    if text.isdigit():
        if int(text) > MAX_ID:
            raise _bad(where, value, "UID out of range")
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise _bad(where, value, "no such user (give a user name that exists or a numeric UID)") from None


def default_proxy_uid() -> int:
    """Kuma: the `kuma-dp` user when the host has one, else UID 5678."""
    try:
        return pwd.getpwnam(c.DEFAULT_PROXY_USER).pw_uid
    except KeyError:
        return c.DEFAULT_PROXY_UID


def parse_uid_exclusions(value: object, where: str) -> tuple[UidPortExclusion, ...]:
    """Each entry `[proto:]ports:uids` (`tcp:22,80-90:0,1000-2000`); proto tcp, udp or * (both)."""
    entries = value if isinstance(value, (list, tuple)) else [value]
    return tuple(_parse_uid_exclusion(str(entry).strip(), where) for entry in entries if str(entry).strip())


def _parse_uid_exclusion(entry: str, where: str) -> UidPortExclusion:
    parts = entry.split(":")
    if len(parts) == 2:
        parts = ["*", *parts]
    if len(parts) != 3:
        raise _bad(where, entry, "expected [protocol:]ports:uids, e.g. tcp:22,80-90:0,1000-2000")
    proto, ports_text, uids_text = (p.strip().lower() for p in parts)
    protocols = {"tcp": ("tcp",), "udp": ("udp",), "*": ("tcp", "udp"), "": ("tcp", "udp")}.get(proto)
    if protocols is None:
        raise _bad(where, entry, f'protocol "{proto}" is not tcp, udp or *')
    ports = () if ports_text in ("*", "") else parse_port_list(ports_text, where)
    if not uids_text:
        raise _bad(where, entry, "no UIDs given")
    try:
        uids = tuple(_parse_range(item, _id_number, "bad range") for item in _items(uids_text))
    except ValueError:
        raise _bad(where, entry, f'"{uids_text}" is not a list of UIDs or UID ranges') from None
    return UidPortExclusion(protocols=protocols, ports=ports, uids=uids)


def check_consistent(config: TProxyConfig) -> TProxyConfig:
    """Whole-config checks a single value cannot see."""
    if config.inbound_port == config.outbound_port:
        raise TProxyConfigError(
            f"redirect inbound port and outbound port must differ (both are {config.inbound_port})"
        )
    if config.redirect_dns and config.dns_port in (config.inbound_port, config.outbound_port):
        raise TProxyConfigError(f"DNS redirect port {config.dns_port} collides with a TCP redirect port")
    return config
