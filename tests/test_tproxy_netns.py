"""Transparent proxy for real: the engine installs Kuma's rules in a fresh network namespace ("app")
joined to a "peer" namespace by a veth pair, on BOTH iptables backends (legacy and nft).

A probe server on 15001/15006 in the app namespace reports SO_ORIGINAL_DST (Envoy's
`use_original_dst` stand-in); clients connect as chosen UIDs. Needs root; skipped otherwise,
but fails when CI=true.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from tests.support.netns_lab import NetnsLab, require_root
from tests.support.tproxy_probes import ask_udp, connect, save, start_servers, start_udp_servers
from transparent_proxy import apply, backend
from transparent_proxy.apply import TProxyError
from transparent_proxy.backend import Backend
from transparent_proxy.config import TProxyConfig
from transparent_proxy.sources import build_config, flag_layer

pytestmark = pytest.mark.timeout(60)

APP_UID, PROXY_UID = 1000, 5678
APP_V4, PEER_V4, PEER2_V4 = "10.77.0.1", "10.77.0.2", "10.77.0.3"
APP_V6, PEER_V6 = "fd77::1", "fd77::2"
PEER_PORT, OTHER_PORT = 8080, 8081


@dataclass
class World:
    lab: NetnsLab
    app: str
    peer: str
    backend: Backend

    def install(self, config: TProxyConfig) -> apply.Report:
        return self.lab.call(self.app, apply.install, config, backend=self.backend)

    def uninstall(self) -> apply.Report:
        return self.lab.call(self.app, apply.uninstall, backend=self.backend)

    def save(self) -> list[str]:
        return save(self.lab, self.app, self.backend.tool(False, "save")) + save(
            self.lab, self.app, self.backend.tool(True, "save")
        )

    def connect(self, host: str, port: int, uid: int = APP_UID, source: str | None = None) -> str:
        return connect(self.lab, self.app, host, port, uid, source)

    def connect_in(self, host: str, port: int, source: str | None = None) -> str:
        """From the peer namespace into the app namespace."""
        return connect(self.lab, self.peer, host, port, 0, source)


@pytest.fixture(params=["legacy", "nft"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    require_root()
    with NetnsLab("tp") as lab:
        app, peer = lab.namespace(), lab.namespace()
        _, peer_if = lab.veth(app, f"{APP_V4}/24", peer, f"{PEER_V4}/24", (f"{APP_V6}/64", f"{PEER_V6}/64"))
        lab.add_addresses(peer, peer_if, f"{PEER2_V4}/24")
        yield World(lab, app, peer, Backend(request.param))


def config(**flags: object) -> TProxyConfig:
    return build_config({"proxy_uid": (PROXY_UID, "test")}, flag_layer(flags))


def peers(world: World) -> None:
    start_servers(world.lab, world.peer, f"peer:{PEER_PORT}", f"peer:{OTHER_PORT}")


def test_app_traffic_is_redirected_and_the_proxys_is_not(world: World) -> None:
    peers(world)
    start_servers(world.lab, world.app, "outbound:15001", "inbound:15006", "app:9000")
    report = world.install(config())
    assert report.changed == ["IPv4", "IPv6"]
    saved = "\n".join(world.save())
    assert ":KUMA_MESH_OUTBOUND - [0:0]" in saved and "--to-ports 15001" in saved
    # a UID 1000 process calling the peer lands on the outbound listener, which knows the original target
    assert world.connect(PEER_V4, PEER_PORT) == f"outbound {PEER_V4}:{PEER_PORT}"
    assert world.connect(PEER_V6, PEER_PORT) == f"outbound {PEER_V6}:{PEER_PORT}"
    # the proxy's own traffic goes out untouched
    assert world.connect(PEER_V4, PEER_PORT, uid=PROXY_UID) == f"peer {PEER_V4}:{PEER_PORT}"
    # inbound: anything arriving for the app goes to the inbound listener
    assert world.connect_in(APP_V4, 9000) == f"inbound {APP_V4}:9000"
    assert world.connect_in(APP_V6, 9000) == f"inbound {APP_V6}:9000"
    # local traffic of the app to localhost is left alone
    assert world.connect("127.0.0.1", 9000) == "app 127.0.0.1:9000"


def test_each_exclusion_goes_direct(world: World) -> None:
    peers(world)
    start_servers(world.lab, world.app, "outbound:15001", "inbound:15006", "app:9000", "app:9001")
    world.install(
        config(
            exclude_outbound_ports=str(OTHER_PORT),
            exclude_outbound_ips=PEER2_V4,
            exclude_outbound_ports_for_uids=(f"tcp:{PEER_PORT}:2000",),
            exclude_inbound_ports="9001",
            exclude_inbound_ips=f"{PEER2_V4}/32",
        )
    )
    assert world.connect(PEER_V4, OTHER_PORT) == f"peer {PEER_V4}:{OTHER_PORT}"  # excluded port
    assert world.connect(PEER2_V4, PEER_PORT) == f"peer {PEER2_V4}:{PEER_PORT}"  # excluded IP
    assert world.connect(PEER_V4, PEER_PORT, uid=2000) == f"peer {PEER_V4}:{PEER_PORT}"  # excluded UID+port
    assert world.connect(PEER_V4, PEER_PORT) == f"outbound {PEER_V4}:{PEER_PORT}"  # everything else
    assert world.connect_in(APP_V4, 9001) == f"app {APP_V4}:9001"  # excluded inbound port
    assert world.connect_in(APP_V4, 9000, source=PEER2_V4) == f"app {APP_V4}:9000"  # excluded source
    assert world.connect_in(APP_V4, 9000) == f"inbound {APP_V4}:9000"


def test_dns_capture_sends_the_apps_queries_to_the_dns_proxy(world: World) -> None:
    start_udp_servers(world.lab, world.peer, "resolver:0.0.0.0:53")
    # as Kuma's DNS proxy: on 127.0.0.1 (where REDIRECT sends it), running as the proxy user
    start_udp_servers(world.lab, world.app, f"uid={PROXY_UID}", "dns-proxy:127.0.0.1:15053")
    world.install(config(dns_capture_all=True))
    assert ask_udp(world.lab, world.app, PEER_V4, 53, uid=APP_UID) == "dns-proxy"
    # the DNS proxy itself (the proxy UID) reaches the real resolver
    assert ask_udp(world.lab, world.app, PEER_V4, 53, uid=PROXY_UID) == "resolver"


def test_uninstall_restores_the_tables_and_double_install_is_idempotent(world: World) -> None:
    # a host that already has rules of its own, in every table we touch
    for tool in (world.backend.tool(False, ""), world.backend.tool(True, "")):
        world.lab.run(
            world.app,
            [tool, "-w", "10", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "ACCEPT"],
            check=True,
        )
        world.lab.run(
            world.app,
            [tool, "-w", "10", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "ACCEPT"],
            check=True,
        )
        for table in ("raw", "mangle"):
            world.lab.run(
                world.app,
                [tool, "-w", "10", "-t", table, "-A", "OUTPUT", "-p", "icmp", "-j", "ACCEPT"],
                check=True,
            )
    before = world.save()
    full = config(exclude_outbound_ips="10.9.9.9,fd00::9", dns_capture_all=True, drop_invalid_packets=True)
    world.install(full)
    once = world.save()
    world.install(full)
    assert world.save() == once
    assert world.lab.call(world.app, backend.detect) == world.backend
    # a different config replaces the earlier install completely (no leftovers of the DNS rules)
    world.install(config())
    assert not [line for line in world.save() if "DNS" in line]
    report = world.uninstall()
    assert report.changed == ["IPv4", "IPv6"]
    assert world.save() == before


def test_uninstall_in_a_fresh_namespace_leaves_it_as_found(world: World) -> None:
    before = world.save()
    world.install(config(dns_capture_all=True))
    world.uninstall()
    after = world.save()
    if world.backend.name == "legacy":  # the kernel keeps a legacy table once used; it stays empty
        after = [line for line in after if not line.startswith((":", "*", "COMMIT"))]
    assert after == before
    assert world.uninstall().changed == []


def test_a_rule_the_kernel_refuses_leaves_the_tables_as_they_were(world: World) -> None:
    world.install(config(exclude_inbound_ports="22"))
    installed = world.save()
    bad = replace(config(), outbound_port=70000)  # past the parser: only the kernel can refuse it
    with pytest.raises(TProxyError) as info:
        world.install(bad)
    assert "--to-ports 70000" in str(info.value) and "nothing was changed" in str(info.value)
    assert world.save() == installed


def test_a_refused_later_table_takes_back_the_tables_already_committed(world: World) -> None:
    """iptables-restore commits nat before it reads raw: a refused raw rule must not leave nat in."""
    before = world.save()
    message = world.lab.call(world.app, _install_with_a_refused_raw_rule, world.backend)
    after = world.save()
    assert not [line for line in after if "KUMA" in line]
    assert "70000" in message and "put back as they were" in message
    if world.backend.name == "legacy":  # the kernel keeps a legacy table once used; it stays empty
        after = [line for line in after if not line.startswith((":", "*", "COMMIT"))]
    assert after == before


def _install_with_a_refused_raw_rule(backend: Backend) -> str:
    from transparent_proxy import constants

    constants.DNS_CT_ZONE_APP = 70000  # `CT --zone 70000`: iptables refuses it, after nat's COMMIT
    try:
        apply.install(config(dns_capture_all=True), backend=backend)
    except TProxyError as exc:
        return str(exc)
    return "installed?!"


def test_a_failing_ipv6_step_rolls_back_ipv4(world: World, tmp_path) -> None:
    before = world.save()
    stub = tmp_path / world.backend.tool(True, "restore")
    stub.write_text("#!/bin/sh\necho 'ip6tables-restore: line 3 failed' >&2\nexit 1\n")
    stub.chmod(0o755)
    message = world.lab.call(world.app, _install_with_tools_first_from, str(tmp_path), world.backend)
    assert "refused the rules" in message
    after = world.save()
    if world.backend.name == "legacy":
        after = [line for line in after if not line.startswith((":", "*", "COMMIT"))]
    assert after == before


def _install_with_tools_first_from(directory: str, backend: Backend) -> str:
    os.environ["PATH"] = f"{directory}:{os.environ['PATH']}"
    try:
        apply.install(config(), backend=backend)
    except TProxyError as exc:
        return str(exc)
    return "installed?!"


def test_detection_follows_the_backend_that_holds_rules(world: World) -> None:
    lab, ns = world.lab, world.app
    assert lab.call(ns, backend.detect) == Backend(backend.DEFAULT)
    lab.run(
        ns,
        [world.backend.tool(False, ""), "-w", "10", "-t", "nat", "-A", "OUTPUT", "-j", "ACCEPT"],
        check=True,
    )
    assert lab.call(ns, backend.detect) == world.backend
    other = "nft" if world.backend.name == "legacy" else "legacy"
    lab.run(
        ns,
        [Backend(other).tool(False, ""), "-w", "10", "-t", "nat", "-A", "OUTPUT", "-j", "ACCEPT"],
        check=True,
    )
    warnings: list[str] = []
    assert lab.call(ns, _detect_with_warnings, warnings) == (Backend("nft"), True)


def _detect_with_warnings(warnings: list[str]) -> tuple[Backend, bool]:
    found = backend.detect(warn=warnings.append)
    return found, any("both" in w for w in warnings)


def test_ipv4_mode_or_no_ipv6_address_installs_ipv4_only(world: World) -> None:
    report = world.install(config(ip_family_mode="ipv4"))
    assert report.changed == ["IPv4"]
    assert not [
        line for line in save(world.lab, world.app, world.backend.tool(True, "save")) if "KUMA" in line
    ]


def test_ipv6_rules_go_in_before_any_ipv6_address_unless_the_kernel_has_ipv6_off() -> None:
    """An address added after install (SLAAC, a late CNI) must find the IPv6 rules already there."""
    require_root()
    with NetnsLab("t4") as lab:
        ns = lab.namespace()  # lo only: no IPv6 address beyond ::1 yet
        report = lab.call(ns, apply.install, config(), backend=Backend("nft"))
        assert report.changed == ["IPv4", "IPv6"]
        assert [line for line in save(lab, ns, "ip6tables-nft-save") if "KUMA_MESH_OUTBOUND" in line]
        assert lab.call(ns, _lo_has, "::6")
        off = lab.namespace()
        lab.run(off, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=True)
        assert lab.call(off, apply.install, config(), backend=Backend("nft")).changed == ["IPv4"]
        assert not [line for line in save(lab, off, "ip6tables-nft-save") if "KUMA" in line]


def _lo_has(address: str) -> bool:
    from transparent_proxy import netns

    return any(a.ifname == "lo" and a.address == address for a in netns.addresses())


def test_a_busy_xtables_lock_is_waited_for_and_retried(tmp_path) -> None:
    require_root()
    with NetnsLab("tl") as lab:
        ns = lab.namespace()
        elapsed, changed = lab.call(ns, _install_while_locked, str(tmp_path / "xtables.lock"), 1.3)
        assert changed == ["IPv4"]
        assert elapsed >= 1.3  # it did wait for the holder, and then got through


def _install_while_locked(lock_path: str, hold_s: float) -> tuple[float, list[str]]:
    import fcntl
    import threading
    import time

    os.environ["XTABLES_LOCKFILE"] = lock_path  # a private lock: other tests' iptables are not held up
    holder = open(lock_path, "w")  # noqa: SIM115 - released by the timer below
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(hold_s, holder.close).start()
    started = time.monotonic()
    # --wait 1 gives up while the lock is still held; the engine retries
    report = apply.install(replace(config(), wait_s=1), backend=Backend("legacy"), ipv6=False)
    return time.monotonic() - started, report.changed
