"""`kuma-init` (and `kumactl install/uninstall transparent-proxy`) as programs, in fresh network
namespaces: exit codes and messages a user sees, and that redirection really works afterwards.

Needs root; skipped otherwise, but fails when CI=true.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from control_plane.kumactl.cli import main as kumactl_main
from tests.support.dns_probes import dns_query, start_dns_responder
from tests.support.netns_lab import NetnsLab, require_root
from tests.support.tproxy_probes import connect, save, start_servers

pytestmark = pytest.mark.timeout(60)

BIN = Path(sys.executable).parent
KUMA_INIT = str(BIN / "kuma-init")
KUMACTL = str(BIN / "kumactl")
APP_V4, PEER_V4 = "10.78.0.1", "10.78.0.2"


@pytest.fixture
def lab() -> Iterator[tuple[NetnsLab, str, str]]:
    require_root()
    with NetnsLab("ki") as lab:
        app, peer = lab.namespace(), lab.namespace()
        lab.veth(app, f"{APP_V4}/24", peer, f"{PEER_V4}/24", ("fd78::1/64", "fd78::2/64"))
        yield lab, app, peer


def all_rules(lab: NetnsLab, ns: str) -> list[str]:
    return save(lab, ns, "iptables-save") + save(lab, ns, "ip6tables-save")


def test_kuma_init_installs_validates_and_exits_0(lab) -> None:
    lab, app, peer = lab
    result = lab.run(app, [KUMA_INIT, "--verbose"])
    assert result.returncode == 0, result.stderr
    assert "validated (IPv4)" in result.stderr and "validated (IPv6)" in result.stderr
    assert "validation passed" in result.stderr
    # after it exited, an app's connection really goes to the outbound listener
    start_servers(lab, peer, "peer:8080")
    start_servers(lab, app, "outbound:15001")
    assert connect(lab, app, PEER_V4, 8080, uid=1000) == f"outbound {PEER_V4}:8080"
    assert connect(lab, app, PEER_V4, 8080, uid=5678) == f"peer {PEER_V4}:8080"


def test_kuma_init_reads_env_and_a_mounted_config_file(lab, tmp_path: Path) -> None:
    lab, app, _ = lab
    config_file = tmp_path / "tproxy.yaml"
    config_file.write_text("redirect:\n  inbound: {port: 16006, excludePorts: [22]}\n")
    env = {**os.environ, "KUMA_TRANSPARENT_PROXY_REDIRECT_OUTBOUND_PORT": "16001"}
    result = lab.run(app, [KUMA_INIT, "--config-file", str(config_file)], env=env)
    assert result.returncode == 0, result.stderr
    rules = "\n".join(all_rules(lab, app))
    assert "--to-ports 16006" in rules and "--to-ports 16001" in rules and "--dport 22 " in rules


def test_kuma_init_redirect_dns_reads_the_resolv_conf_named_by_env(lab, tmp_path: Path) -> None:
    lab, app, peer = lab
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(f"nameserver {PEER_V4}\nnameserver fd78::2\n")
    env = {**os.environ, "KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": str(resolv_conf)}
    result = lab.run(app, [KUMA_INIT, "--redirect-dns"], env=env)
    assert result.returncode == 0, result.stderr
    assert (
        f"DNS: queries (UDP/TCP 53) to {PEER_V4}, fd78::2 (the nameservers of {resolv_conf})" in result.stderr
    )
    v4, v6 = "\n".join(save(lab, app, "iptables-save")), "\n".join(save(lab, app, "ip6tables-save"))
    for proto in ("udp", "tcp"):
        assert f"-A OUTPUT -d {PEER_V4}/32 -p {proto} -m {proto} --dport 53 " in v4
        assert f"-A OUTPUT -d fd78::2/128 -p {proto} -m {proto} --dport 53 " in v6
    # and it works: the app's query to the nameserver lands on the DNS proxy, another address's does not
    start_dns_responder(lab, peer, ("resolver", "0.0.0.0", 53))
    start_dns_responder(lab, app, ("dns-proxy", "127.0.0.1", 15053), uid=5678)
    assert dns_query(lab, app, "udp", PEER_V4, uid=1000).startswith("dns-proxy ")
    assert dns_query(lab, app, "udp", PEER_V4, uid=5678) == "resolver 0.0.0.0:53"


def test_kuma_init_redirect_all_dns_traffic_from_a_config_file(lab, tmp_path: Path) -> None:
    lab, app, _ = lab
    config_file = tmp_path / "tproxy.yaml"
    config_file.write_text("redirect:\n  dns: {captureAll: true, port: 16053}\n")
    result = lab.run(app, [KUMA_INIT, "--config-file", str(config_file)])
    assert result.returncode == 0, result.stderr
    rules = "\n".join(all_rules(lab, app))
    assert (
        '-A OUTPUT -p udp -m udp --dport 53 -m comment --comment "kuma/mesh/transparent/proxy/redirect all'
        in rules
    )
    assert rules.count("-j REDIRECT --to-ports 16053") == 4  # UDP and TCP, IPv4 and IPv6


def test_kuma_init_redirect_dns_without_nameserver_says_so_and_changes_nothing(lab, tmp_path: Path) -> None:
    lab, app, _ = lab
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("search example.org\n")
    before = all_rules(lab, app)
    result = lab.run(
        app, [KUMA_INIT, "--redirect-dns", "--redirect-dns-resolv-config-path", str(resolv_conf)]
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        f"{resolv_conf} lists no nameserver" in result.stderr
        and "--redirect-all-dns-traffic" in result.stderr
    )
    assert all_rules(lab, app) == before


def test_kuma_init_without_net_admin_fails_with_a_message(lab) -> None:
    lab, app, _ = lab
    before = all_rules(lab, app)
    result = lab.run(app, ["capsh", "--drop=cap_net_admin", "--", "-c", KUMA_INIT])
    assert result.returncode == 1
    assert "could not install the transparent proxy" in result.stderr
    assert "CAP_NET_ADMIN" in result.stderr and "Traceback" not in result.stderr
    assert all_rules(lab, app) == before


def test_kuma_init_fails_when_traffic_is_not_redirected(lab) -> None:
    lab, app, _ = lab
    # a config that exempts the proxy's own UID from everything: the validator's probe cannot land
    result = lab.run(
        app, [KUMA_INIT, "--exclude-outbound-ports-for-uids", "tcp:*:5678", "--validation-timeout", "0.5"]
    )
    assert result.returncode == 3
    assert "validation failed (IPv4): traffic is not redirected" in result.stderr


def test_kuma_init_bad_value_names_the_flag_and_changes_nothing(lab) -> None:
    lab, app, _ = lab
    before = all_rules(lab, app)
    result = lab.run(app, [KUMA_INIT, "--exclude-inbound-ports", "22,99999"])
    assert result.returncode == 1
    assert 'Error: --exclude-inbound-ports: invalid value "22,99999"' in result.stderr
    assert all_rules(lab, app) == before


def test_kumactl_install_dry_run_then_install_and_uninstall(lab) -> None:
    lab, app, _ = lab
    before = all_rules(lab, app)
    dry = lab.run(
        app, [KUMACTL, "install", "transparent-proxy", "--dry-run", "--exclude-inbound-ports", "22"]
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("# IPv4: iptables-restore --noflush\n*nat\n") and "# IPv6" in dry.stdout
    assert all_rules(lab, app) == before
    done = lab.run(app, [KUMACTL, "install", "transparent-proxy", "--kuma-dp-uid", "5678"])
    assert done.returncode == 0 and "transparent proxy installed (IPv4, IPv6" in done.stdout
    gone = lab.run(app, [KUMACTL, "uninstall", "transparent-proxy"])
    assert gone.returncode == 0 and "transparent proxy uninstalled" in gone.stdout
    assert all_rules(lab, app) == before  # nft (the default here) drops the tables it left empty
    again = lab.run(app, [KUMACTL, "uninstall", "transparent-proxy"])
    assert "nothing to remove" in again.stdout


def test_kumactl_redirect_dns_reads_etc_resolv_conf_by_default(lab) -> None:
    """As on a VM: no path given, the nameservers of /etc/resolv.conf (the namespace's own, as
    `ip netns exec` shows it) are the ones whose queries go to the DNS proxy."""
    lab, app, peer = lab
    lab.resolv_conf(app, f"search example.org\nnameserver {PEER_V4}\n")
    done = lab.run(app, [KUMACTL, "install", "transparent-proxy", "--redirect-dns", "--kuma-dp-user", "5678"])
    assert done.returncode == 0, done.stderr
    assert f"DNS: queries (UDP/TCP 53) to {PEER_V4} (the nameservers of /etc/resolv.conf)" in done.stdout
    start_dns_responder(lab, peer, ("resolver", PEER_V4, 53))
    start_dns_responder(lab, app, ("dns-proxy", "127.0.0.1", 15053), uid=5678)
    for proto in ("udp", "tcp"):
        assert dns_query(lab, app, proto, PEER_V4, uid=1000).startswith("dns-proxy ")
        assert dns_query(lab, app, proto, PEER_V4, uid=5678) == f"resolver {PEER_V4}:53"
    assert lab.run(app, [KUMACTL, "uninstall", "transparent-proxy"]).returncode == 0


def test_kumactl_dry_run_shows_each_dns_mode(lab, tmp_path: Path) -> None:
    lab, app, _ = lab
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 10.96.0.10\n")
    install = [KUMACTL, "install", "transparent-proxy", "--dry-run"]
    only = lab.run(app, [*install, "--redirect-dns", "--redirect-dns-resolv-config-path", str(resolv_conf)])
    assert only.returncode == 0, only.stderr
    assert only.stdout.startswith("# DNS: queries (UDP/TCP 53) to 10.96.0.10 (the nameservers of")
    assert "-I OUTPUT 3 -d 10.96.0.10/32 -p udp -m udp --dport 53 " in only.stdout
    every = lab.run(app, [*install, "--redirect-all-dns-traffic", "--skip-dns-conntrack-zone-split"])
    assert every.returncode == 0, every.stderr
    assert every.stdout.startswith("# DNS: queries (UDP/TCP 53) to any address, of every user but UID ")
    assert "-I OUTPUT 3 -p udp -m udp --dport 53 " in every.stdout and "*raw" not in every.stdout
    missing = lab.run(app, [*install, "--redirect-dns", "--redirect-dns-resolv-config-path", "/nonexistent"])
    assert missing.returncode == 1
    assert "cannot read /nonexistent" in missing.stderr and "--redirect-all-dns-traffic" in missing.stderr


def test_kumactl_needs_root_unless_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(kumactl_main, ["install", "transparent-proxy"])
    assert result.exit_code == 1
    assert "must run as root" in result.output
    result = CliRunner().invoke(kumactl_main, ["uninstall", "transparent-proxy"])
    assert result.exit_code == 1 and "must run as root" in result.output
