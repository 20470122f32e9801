"""The DNS server as one component of the agent: whether it runs, its ports, its records source.

It runs when `--dns-enabled` (KUMA_DNS_ENABLED, default true, as Kuma) and the proxy is a Dataplane
with `networking.transparentProxying`: only then does anything send it queries (the iptables rules
redirect port 53 to it) and does the control plane serve it records. An agent given its Dataplane
by name only learns that from the bootstrap response (`isUsingTransparentProxy`, Kuma's field) and
starts the server then. Kuma also starts it for
Dataplanes without transparent proxying, where it only takes port 15053 away from a second agent
on the same host.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kuma_common.dp_contract import DATAPLANE_PROXY_TYPE, DNS_RECORDS_SOCKET, TRANSPARENT_PROXY_FIELD
from kuma_dp import constants as c
from kuma_dp.config import RunConfig
from kuma_dp.dns.records_source import RecordsSource
from kuma_dp.dns.resolv import read_resolv_conf
from kuma_dp.dns.server import BindError, DnsServer, Limits
from kuma_dp.dns.upstream import Forwarder
from kuma_dp.errors import ConfigError
from transparent_proxy.netns import has_ipv6

log = logging.getLogger("dns")

LIMITS = Limits(
    max_forwards=c.DNS_MAX_FORWARDS_IN_FLIGHT,
    udp_send_limit=c.DNS_UDP_SEND_BUFFER_LIMIT,
    max_tcp=c.DNS_MAX_TCP_CONNECTIONS,
    tcp_idle_timeout=c.DNS_TCP_IDLE_TIMEOUT_S,
    ttl=c.DNS_TTL_S,
)


def is_transparent(dataplane_json: str | None) -> bool:
    """Whether the Dataplane resource asks for transparent proxying."""
    if not dataplane_json:
        return False
    networking = json.loads(dataplane_json).get("networking") or {}
    return bool(networking.get("transparentProxying"))


def dns_wanted(config: RunConfig) -> bool | None:
    """Whether to run the DNS server; None: the Dataplane is not known yet (given by name only),
    ask `dns_wanted_by_sidecar` once the control plane has answered the bootstrap request."""
    if not config.dns_enabled or config.proxy_type != DATAPLANE_PROXY_TYPE:
        return False
    if not config.dataplane_json:
        return None
    return is_transparent(config.dataplane_json)


def dns_wanted_by_sidecar(sidecar_configuration: dict[str, Any]) -> bool:
    """For a Dataplane given by name: what the bootstrap response's sidecar configuration says."""
    networking = sidecar_configuration.get("networking")
    return isinstance(networking, dict) and networking.get(TRANSPARENT_PROXY_FIELD) is True


class DnsComponent:
    """Bound by `start` (ConfigError when a port is taken), served by `run` until cancelled."""

    def __init__(self, server: DnsServer, source: RecordsSource) -> None:
        self.server = server
        self.source = source

    async def run(self) -> None:
        await self.server.serve(self.source.run())


def start_dns(config: RunConfig, workdir: Path, resolv_conf: Path = Path(c.DNS_RESOLV_CONF)) -> DnsComponent:
    """Read the upstreams (now, before anything is redirected) and take the ports."""
    upstreams = read_resolv_conf(resolv_conf, config.dns_port)
    forwarder = Forwarder(upstreams, c.DNS_UPSTREAM_TIMEOUT_S, c.DNS_FORWARD_DEADLINE_S)
    server = DnsServer(c.DNS_LISTEN_ADDRESSES, config.dns_port, forwarder, LIMITS, ipv6=has_ipv6())
    try:
        server.bind()
    except BindError as exc:
        raise ConfigError(
            f"cannot listen for DNS on {exc.where} (port {config.dns_port}: {config.dns_port_source}): "
            f"{exc.strerror}; choose another port with --dns-coredns-port or {c.ENV_DNS_PROXY_PORT} "
            f"(and redirect DNS to it), or turn the DNS server off with --dns-enabled=false "
            f"({c.ENV_DNS_ENABLED}=false)"
        ) from None
    source = RecordsSource(
        workdir / DNS_RECORDS_SOCKET,
        c.DNS_RECORDS_POLL_INTERVAL_S,
        c.DNS_RECORDS_REQUEST_TIMEOUT_S,
        c.DNS_RECORDS_MAX_BYTES,
        server.set_records,
    )
    forwarding = ", ".join(u.describe() for u in upstreams) or f"nowhere ({resolv_conf} lists no nameserver)"
    log.info("DNS on %s (UDP, TCP); other names forwarded to %s", ", ".join(server.bound), forwarding)
    return DnsComponent(server, source)
