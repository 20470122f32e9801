"""DNS capture for real, on both iptables backends (legacy and nft), IPv4 and IPv6: real UDP and TCP
queries from an "app" namespace whose "peer" namespace holds the resolvers.

- `--redirect-dns`: a query to a nameserver of the resolv.conf lands on the DNS proxy (a responder on
  port 15053, running as the proxy user); a query to another address on port 53 does not (UDP reaches
  that address; TCP is ordinary outbound traffic and goes to the outbound listener like any other).
- `--redirect-all-dns-traffic`: both land on the DNS proxy.
- The proxy user's own queries always reach the real resolvers, a local one (127.0.0.53) included.
- A resolv.conf without a nameserver stops the install with one message, changing nothing; uninstall
  restores the tables exactly.

Needs root; skipped otherwise, but fails when CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.dns_probes import dns_query, start_dns_responder
from tests.support.netns_lab import NetnsLab, require_root
from tests.support.tproxy_probes import save
from transparent_proxy import apply
from transparent_proxy.apply import TProxyError
from transparent_proxy.backend import Backend
from transparent_proxy.config import TProxyConfig
from transparent_proxy.sources import build_config, flag_layer

pytestmark = pytest.mark.timeout(90)

APP_UID, PROXY_UID = 1000, 5678
APP_V4, NS_V4, OTHER_V4 = "10.76.0.1", "10.76.0.2", "10.76.0.3"
APP_V6, NS_V6, OTHER_V6 = "fd76::1", "fd76::2", "fd76::3"
DNS_PORT = 15053
PROTOS = ("udp", "tcp")


def _dest(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class World:
    lab: NetnsLab
    app: str
    peer: str
    backend: Backend
    resolv_conf: Path

    def config(self, **flags: object) -> TProxyConfig:
        given = {"resolv_config_path": str(self.resolv_conf), **flags}
        return build_config({"proxy_uid": (PROXY_UID, "test")}, flag_layer(given))

    def install(self, config: TProxyConfig) -> apply.Report:
        return self.lab.call(self.app, apply.install, config, backend=self.backend)

    def check(self, config: TProxyConfig) -> list[str]:
        return self.lab.call(self.app, apply.check, config, backend=self.backend)

    def uninstall(self) -> apply.Report:
        return self.lab.call(self.app, apply.uninstall, backend=self.backend)

    def save(self) -> list[str]:
        return save(self.lab, self.app, self.backend.tool(False, "save")) + save(
            self.lab, self.app, self.backend.tool(True, "save")
        )

    def query(self, proto: str, host: str, uid: int = APP_UID) -> str:
        return dns_query(self.lab, self.app, proto, host, uid)


@pytest.fixture(params=["legacy", "nft"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    require_root()
    with NetnsLab("td") as lab:
        app, peer = lab.namespace(), lab.namespace()
        _, peer_if = lab.veth(app, f"{APP_V4}/24", peer, f"{NS_V4}/24", (f"{APP_V6}/64", f"{NS_V6}/64"))
        lab.add_addresses(peer, peer_if, f"{OTHER_V4}/24", f"{OTHER_V6}/64")
        # the real resolvers: the nameserver of the resolv.conf, and another host answering on 53
        start_dns_responder(
            lab,
            peer,
            *(("resolver", host, 53) for host in (NS_V4, NS_V6)),
            *(("other-resolver", host, 53) for host in (OTHER_V4, OTHER_V6)),
        )
        # the DNS proxy, as the agent runs it: the proxy user, on loopback (where REDIRECT delivers)
        start_dns_responder(
            lab, app, ("dns-proxy", "127.0.0.1", DNS_PORT), ("dns-proxy", "::1", DNS_PORT), uid=PROXY_UID
        )
        # the outbound listener: where TCP that is not DNS for a nameserver goes, as any outbound TCP
        start_dns_responder(lab, app, ("outbound", "0.0.0.0", 15001), ("outbound", "::", 15001))
        resolv_conf = tmp_path / "resolv.conf"
        resolv_conf.write_text(
            f"# as a cluster writes it\nsearch default.svc\nnameserver {NS_V4}\nnameserver {NS_V6}\n"
        )
        yield World(lab, app, peer, Backend(request.param), resolv_conf)


def _host_rules(world: World) -> None:
    """Rules of the host's own in every table we touch, so 'as before' is not just 'empty'."""
    for tool in (world.backend.tool(False, ""), world.backend.tool(True, "")):
        world.lab.run(
            world.app,
            [tool, "-w", "10", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "ACCEPT"],
            check=True,
        )
        world.lab.run(
            world.app,
            [tool, "-w", "10", "-t", "raw", "-A", "OUTPUT", "-p", "icmp", "-j", "ACCEPT"],
            check=True,
        )


def test_redirect_dns_catches_only_queries_to_the_resolv_conf_nameservers(world: World) -> None:
    _host_rules(world)
    before = world.save()
    report = world.install(world.config(redirect_dns=True))
    assert report.changed == ["IPv4", "IPv6"] and report.nameservers == (NS_V4, NS_V6)
    for ns, other in ((NS_V4, OTHER_V4), (NS_V6, OTHER_V6)):
        # the application's queries to the nameserver land on the DNS proxy, UDP and TCP
        assert world.query("udp", ns).startswith("dns-proxy ")
        assert world.query("tcp", ns) == f"dns-proxy {_dest(ns, 53)}"
        # to another address on port 53: UDP reaches it; TCP is outbound traffic like any other
        assert world.query("udp", other) == f"other-resolver {_dest(other, 53)}"
        assert world.query("tcp", other) == f"outbound {_dest(other, 53)}"
        # the proxy user's own queries reach the real resolvers
        for proto in PROTOS:
            assert world.query(proto, ns, uid=PROXY_UID) == f"resolver {_dest(ns, 53)}"
            assert world.query(proto, other, uid=PROXY_UID) == f"other-resolver {_dest(other, 53)}"
    world.uninstall()
    assert world.save() == before


def test_redirect_all_dns_traffic_catches_every_query_but_the_proxys(world: World) -> None:
    _host_rules(world)
    before = world.save()
    world.resolv_conf.write_text("")  # not read in this mode
    world.install(world.config(dns_capture_all=True))
    for host in (NS_V4, OTHER_V4, NS_V6, OTHER_V6):
        assert world.query("udp", host).startswith("dns-proxy ")
        assert world.query("tcp", host) == f"dns-proxy {_dest(host, 53)}"
        for proto in PROTOS:
            assert world.query(proto, host, uid=PROXY_UID).endswith(f"resolver {_dest(host, 53)}")
    world.uninstall()
    assert world.save() == before


def test_a_local_resolver_stays_reachable_for_the_proxy_and_is_captured_for_the_app(world: World) -> None:
    """systemd-resolved's stub on 127.0.0.53: the proxy's forwarded queries, UDP and TCP, must reach
    it (not the DNS proxy, not the inbound listener); the application's go to the DNS proxy."""
    start_dns_responder(world.lab, world.app, ("local-resolver", "127.0.0.53", 53))
    world.resolv_conf.write_text("nameserver 127.0.0.53\n")
    world.install(world.config(redirect_dns=True, ip_family_mode="ipv4"))
    for proto in PROTOS:
        assert world.query(proto, "127.0.0.53").startswith("dns-proxy ")
        assert world.query(proto, "127.0.0.53", uid=PROXY_UID) == "local-resolver 127.0.0.53:53"
    # the peer is no nameserver of this resolv.conf: not captured
    assert world.query("udp", NS_V4) == f"resolver {NS_V4}:53"
    assert world.query("tcp", NS_V4) == f"outbound {NS_V4}:53"


def test_switching_modes_and_the_conntrack_zone_switch(world: World) -> None:
    ns_mode = world.config(redirect_dns=True)
    all_mode = world.config(dns_capture_all=True)
    no_zones = world.config(dns_capture_all=True, skip_dns_conntrack_zone_split=True)
    for config in (ns_mode, all_mode, no_zones, ns_mode):
        world.install(config)
        assert world.check(config) == []
        raw = [line for line in world.save() if "CT --zone" in line]
        assert bool(raw) is not config.skip_dns_conntrack_zone_split
        assert world.query("udp", OTHER_V4).startswith(
            "dns-proxy" if config.dns_capture_all else "other-resolver"
        )
        assert world.query("udp", NS_V6).startswith("dns-proxy ")
        assert world.query("tcp", NS_V4, uid=PROXY_UID) == f"resolver {NS_V4}:53"
    assert world.check(all_mode) != []  # CHECK tells the modes apart


def test_a_resolv_conf_without_nameserver_changes_nothing(world: World) -> None:
    world.install(world.config(dns_capture_all=True))
    installed = world.save()
    for text in ("search example.org\n# nameserver 10.0.0.1\n", None):
        if text is None:
            world.resolv_conf.unlink()
        else:
            world.resolv_conf.write_text(text)
        with pytest.raises(TProxyError) as info:
            world.install(world.config(redirect_dns=True))
        message = str(info.value)
        assert str(world.resolv_conf) in message and "--redirect-all-dns-traffic" in message
        assert world.save() == installed
    assert world.query("udp", OTHER_V4).startswith("dns-proxy ")  # the earlier install still works
