"""Transparent proxy, pure part: config sources and errors, the rule builder (golden files and a
property test), and the removal/reinstall text computed from an `iptables-save` dump.

The builder writes rules in the exact form both `iptables-legacy-save` and `iptables-nft-save` print
them back (explicit `-m tcp`, no apostrophes in comments), so one golden file serves both backends;
tests/test_tproxy_netns.py proves that round trip on each backend.
Rewrite the golden files after an intended change with `UPDATE_GOLDEN=1 pytest tests/test_tproxy_rules.py`.
"""

from __future__ import annotations

import os
import re
from ipaddress import ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transparent_proxy import constants as c
from transparent_proxy.apply import restore_text
from transparent_proxy.config import TProxyConfig, TProxyConfigError, UidPortExclusion
from transparent_proxy.rules import IPV4, IPV6, build, render
from transparent_proxy.saved import parse_save
from transparent_proxy.sources import (
    annotation_layer,
    build_config,
    env_layer,
    flag_layer,
    yaml_layer,
)

GOLDEN = Path(__file__).parent / "golden" / "tproxy"

OPTION_SETS: dict[str, dict[str, object]] = {
    "default": {},
    "exclusions": {
        "exclude_inbound_ports": "22,8000-8010",
        "exclude_outbound_ports": "443",
        "exclude_inbound_ips": "10.0.0.0/8,fd00::/8",
        "exclude_outbound_ips": "192.168.1.1,fd00::1",
    },
    "uids": {"exclude_outbound_ports_for_uids": ("tcp:22,80-90:0,1000-2000", "udp:*:33")},
    "dns": {"redirect_dns": True},  # only queries to the nameservers of the resolv.conf
    "dns-all": {"dns_capture_all": True},
    "dns-all-no-ct-zones": {"dns_capture_all": True, "skip_dns_conntrack_zone_split": True},
    "full": {
        "inbound_port": "16006",
        "outbound_port": "16001",
        "proxy_uid": "1234",
        "exclude_inbound_ports": "22",
        "exclude_outbound_ips": "203.0.113.0/24,2001:db8::/32",
        "exclude_outbound_ports_for_uids": ("tcp:22:0",),
        "redirect_dns": True,
        "dns_port": "16053",
        "drop_invalid_packets": True,
    },
}


# What a resolv.conf lists (`--redirect-dns` reads it at install time): a remote and a local resolver
# (systemd-resolved's stub) for IPv4, one for IPv6.
NAMESERVERS = ("10.96.0.10", "127.0.0.53", "fd00:10:96::a")


def config_of(options: dict[str, object]) -> TProxyConfig:
    return build_config({"proxy_uid": (c.DEFAULT_PROXY_UID, "test")}, flag_layer(options))


@pytest.mark.parametrize("family", [IPV4, IPV6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("case", sorted(OPTION_SETS))
def test_rules_match_golden_file(case: str, family) -> None:
    text = render(build(config_of(OPTION_SETS[case]), family, NAMESERVERS))
    path = GOLDEN / f"{case}.{'ipv6' if family.ipv6 else 'ipv4'}.rules"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text()


def test_default_rules_are_kumas_chain_layout() -> None:
    text = render(build(config_of({}), IPV4))
    chains = re.findall(r"^:(\S+)", text, re.M)
    assert chains == [c.CHAIN_INBOUND, c.CHAIN_INBOUND_REDIRECT, c.CHAIN_OUTBOUND, c.CHAIN_OUTBOUND_REDIRECT]
    rules = [line for line in text.splitlines() if line.startswith(("-A", "-I"))]
    assert all(f'--comment "{c.COMMENT_PREFIX}' in rule for rule in rules)
    assert "-j REDIRECT --to-ports 15006" in text and "-j REDIRECT --to-ports 15001" in text
    assert "--uid-owner 5678" in text and "127.0.0.6/32" in text
    v6 = render(build(config_of({}), IPV6))
    assert "::6/128" in v6 and "::1/128" in v6 and "127.0.0" not in v6


# --- property: only our chains or built-ins, exclusions before the redirect ---------------------------------

BUILTIN_TARGETS = {"RETURN", "REDIRECT", "CT", "DROP", "ACCEPT"}
BUILTIN_CHAINS = {"PREROUTING", "OUTPUT", "INPUT", "POSTROUTING", "FORWARD"}
ports = st.tuples(st.integers(1, 65535), st.integers(0, 50)).map(lambda t: (t[0], min(65535, t[0] + t[1])))
uids = st.tuples(st.integers(0, 70000), st.integers(0, 5)).map(lambda t: (t[0], t[0] + t[1]))
nets = st.one_of(
    st.ip_addresses(v=4).map(lambda a: f"{a}/32"), st.ip_addresses(v=6).map(lambda a: f"{a}/128")
)
uid_exclusions = st.builds(
    UidPortExclusion,
    protocols=st.sampled_from([("tcp",), ("udp",), ("tcp", "udp")]),
    ports=st.lists(ports, max_size=20).map(tuple),
    uids=st.lists(uids, min_size=1, max_size=3).map(tuple),
)
configs = st.builds(
    TProxyConfig,
    proxy_uid=st.integers(0, 70000),
    exclude_inbound_ports=st.lists(ports, max_size=5).map(tuple),
    exclude_outbound_ports=st.lists(ports, max_size=5).map(tuple),
    exclude_inbound_ips=st.lists(nets, max_size=4).map(tuple),
    exclude_outbound_ips=st.lists(nets, max_size=4).map(tuple),
    exclude_outbound_ports_for_uids=st.lists(uid_exclusions, max_size=3).map(tuple),
    redirect_dns=st.booleans(),
    dns_capture_all=st.booleans(),
    skip_dns_conntrack_zone_split=st.booleans(),
    drop_invalid_packets=st.booleans(),
)
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


@settings(max_examples=150, deadline=None)
@given(config=configs, ipv6=st.booleans(), nameservers=st.lists(addresses, max_size=4))
def test_every_rule_stays_in_our_chains_and_exclusions_come_first(
    config: TProxyConfig, ipv6: bool, nameservers: list[str]
) -> None:
    tables = build(config, IPV6 if ipv6 else IPV4, nameservers)
    _dns_rules_only_where_asked(config, tables, ipv6, nameservers)
    for table in tables:
        declared = set(table.chains)
        assert all(ch.startswith(c.CHAIN_PREFIX) for ch in declared)
        for rule in table.rules:
            target = rule.spec.split(" -j ", 1)[1].split()[0]
            assert target in BUILTIN_TARGETS or target in declared, rule
            assert rule.chain in BUILTIN_CHAINS or rule.chain in declared, rule
            assert f'--comment "{c.COMMENT_PREFIX}' in rule.spec
            assert rule.spec.count("--dports") <= 1 and _multiport_slots(rule.spec) <= 15
        for chain in {r.chain for r in table.rules}:
            specs = [r.spec for r in table.rules if r.chain == chain]
            inserted = [r.insert for r in table.rules if r.chain == chain]
            assert inserted == sorted(inserted, reverse=True), "inserted rules first"
            jumps = [i for i, s in enumerate(specs) if re.search(r"-j (KUMA_MESH\S*|REDIRECT)", s)]
            returns = [i for i, s in enumerate(specs) if "skip" in s and s.endswith("-j RETURN")]
            redirect_all = [i for i in jumps if "TCP traffic to" in specs[i]]
            assert all(r < min(redirect_all) for r in returns if redirect_all), chain


def _dns_rules_only_where_asked(config: TProxyConfig, tables, ipv6: bool, nameservers: list[str]) -> None:
    """The proxy user's DNS is exempt first; then every query, or only those to this family's
    nameservers; no DNS rule at all without capture or without a nameserver of this family."""
    output = [r.spec for t in tables if t.table == "nat" for r in t.rules if r.chain == "OUTPUT"]
    dns = [spec for spec in output if f"--dport {c.DNS_PORT} " in spec]
    own = [n for n in nameservers if (":" in n) == ipv6]
    if not config.redirect_dns or not (config.dns_capture_all or own):
        assert not dns and not [t for t in tables if t.table == "raw"]
        return
    assert [f"--uid-owner {config.proxy_uid} " in spec for spec in dns[:2]] == [True, True]
    redirects = [spec for spec in dns if "-j REDIRECT" in spec]
    if config.dns_capture_all:
        assert len(redirects) == 2 and not any(" -d " in f" {spec}" for spec in redirects)
    else:
        assert {spec.split()[1] for spec in redirects} == {str(ip_network(n)) for n in own}
    assert any(t.table == "raw" for t in tables) is not config.skip_dns_conntrack_zone_split


def _multiport_slots(spec: str) -> int:
    match = re.search(r"--dports (\S+)", spec)
    return sum(2 if ":" in p else 1 for p in match.group(1).split(",")) if match else 0


# --- config sources ----------------------------------------------------------------------------------------


def test_flags_env_yaml_annotations_build_the_same_config() -> None:
    expected = TProxyConfig(
        inbound_port=16006,
        outbound_port=16001,
        proxy_uid=1234,
        exclude_inbound_ports=((22, 22),),
        exclude_outbound_ports=((80, 90),),
        exclude_outbound_ips=("10.0.0.0/8",),
        exclude_outbound_ports_for_uids=(UidPortExclusion(("tcp",), ((22, 22),), ((0, 0), (1000, 2000))),),
        redirect_dns=True,
        dns_capture_all=True,
        dns_port=16053,
    )
    flags = flag_layer(
        {
            "inbound_port": 16006,
            "outbound_port": "16001",
            "proxy_uid": "1234",
            "exclude_inbound_ports": "22",
            "exclude_outbound_ports": "80-90",
            "exclude_outbound_ips": "10.0.0.0/8",
            "exclude_outbound_ports_for_uids": ("tcp:22:0,1000-2000",),
            "redirect_dns": True,
            "dns_capture_all": True,
            "dns_port": "16053",
        }
    )
    yaml_text = """
kumaDPUser: "1234"
redirect:
  inbound: {port: 16006, excludePorts: [22]}
  outbound:
    port: 16001
    excludePorts: ["80-90"]
    excludePortsForIPs: [10.0.0.0/8]
    excludePortsForUIDs: ["tcp:22:0,1000-2000"]
  dns: {enabled: true, captureAll: true, port: 16053}
"""
    env = {
        "KUMA_TRANSPARENT_PROXY_REDIRECT_INBOUND_PORT": "16006",
        "KUMA_TRANSPARENT_PROXY_REDIRECT_OUTBOUND_PORT": "16001",
        "KUMA_TRANSPARENT_PROXY_KUMA_DP_USER": "1234",
        "KUMA_TRANSPARENT_PROXY_REDIRECT_INBOUND_EXCLUDE_PORTS": "22",
        "KUMA_TRANSPARENT_PROXY_REDIRECT_OUTBOUND_EXCLUDE_PORTS": "80-90",
        "KUMA_TRANSPARENT_PROXY_REDIRECT_OUTBOUND_EXCLUDE_PORTS_FOR_IPS": "10.0.0.0/8",
        "KUMA_TRANSPARENT_PROXY_REDIRECT_OUTBOUND_EXCLUDE_PORTS_FOR_UIDS": "tcp:22:0,1000-2000",
        "KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_ENABLED": "true",
        "KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_CAPTURE_ALL": "true",
        "KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_PORT": "16053",
    }
    annotations = {
        "kuma.io/transparent-proxying-inbound-port": "16006",
        "kuma.io/transparent-proxying-outbound-port": "16001",
        "kuma.io/sidecar-uid": "1234",
        "traffic.kuma.io/exclude-inbound-ports": "22",
        "traffic.kuma.io/exclude-outbound-ports": "80-90",
        "traffic.kuma.io/exclude-outbound-ips": "10.0.0.0/8",
        "traffic.kuma.io/exclude-outbound-ports-for-uids": "tcp:22:0,1000-2000",
        "kuma.io/builtin-dns": "enabled",  # Kuma's CNI: every query of the pod (captureAll)
        "kuma.io/builtin-dns-port": "16053",
        "kuma.io/unrelated": "ignored",
    }
    assert build_config(flags) == expected
    assert build_config(yaml_layer(yaml_text, "tp.yaml")) == expected
    assert build_config(env_layer(env)) == expected
    assert build_config(annotation_layer(annotations)) == expected


def test_later_layers_win() -> None:
    config = build_config(
        yaml_layer("redirect: {inbound: {port: 1111}, outbound: {port: 2222}}", "f.yaml"),
        env_layer({"KUMA_TRANSPARENT_PROXY_REDIRECT_INBOUND_PORT": "3333"}),
        flag_layer({"inbound_port": None, "outbound_port": 4444}),
    )
    assert (config.inbound_port, config.outbound_port) == (3333, 4444)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (flag_layer({"inbound_port": "70000"}), '--redirect-inbound-port: invalid value "70000"'),
        (flag_layer({"exclude_inbound_ports": "22,abc"}), '--exclude-inbound-ports: invalid value "22,abc"'),
        (flag_layer({"exclude_outbound_ports": "90-80"}), "--exclude-outbound-ports"),
        (flag_layer({"exclude_outbound_ips": "10.0.0.1/8"}), '"10.0.0.1/8" is not an IP address or CIDR'),
        (flag_layer({"exclude_inbound_ips": "nope"}), "--exclude-inbound-ips"),
        (
            flag_layer({"exclude_outbound_ports_for_uids": ("sctp:22:0",)}),
            '--exclude-outbound-ports-for-uids: invalid value "sctp:22:0": protocol "sctp"',
        ),
        (flag_layer({"exclude_outbound_ports_for_uids": ("tcp:22:x",)}), '"x" is not a list of UIDs'),
        (flag_layer({"proxy_uid": "no-such-user-here"}), '--kuma-dp-user: invalid value "no-such-user-here"'),
        (flag_layer({"ip_family_mode": "ipv6"}), "--ip-family-mode"),
        (flag_layer({"wait_s": "soon"}), '--wait: invalid value "soon": expected whole seconds'),
        (flag_layer({"redirect_dns": "maybe"}), "--redirect-dns"),
        (flag_layer({"dns_capture_all": "all"}), '--redirect-all-dns-traffic: invalid value "all"'),
        (flag_layer({"resolv_config_path": " "}), "--redirect-dns-resolv-config-path: invalid value"),
        (
            annotation_layer({"kuma.io/builtin-dns": "sometimes"}),
            'annotation kuma.io/builtin-dns: invalid value "sometimes"',
        ),
        (
            env_layer({"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_SKIP_CONNTRACK_ZONE_SPLIT": "x"}),
            "KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_SKIP_CONNTRACK_ZONE_SPLIT",
        ),
        (
            env_layer({"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_PORT": "0"}),
            "KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_PORT",
        ),
        (
            annotation_layer({"traffic.kuma.io/exclude-inbound-ports": "x"}),
            "annotation traffic.kuma.io/exclude-",
        ),
        (
            yaml_layer("redirect: {inbound: {port: -1}}", "tp.yaml"),
            'tp.yaml: redirect.inbound.port: invalid value "-1"',
        ),
        (flag_layer({"inbound_port": 15001}), "inbound port and outbound port must differ"),
    ],
)
def test_bad_values_name_their_source_and_value(layer, message: str) -> None:
    with pytest.raises(TProxyConfigError) as info:
        build_config(layer)
    assert message in str(info.value)


def test_yaml_unknown_key_and_broken_yaml_are_named() -> None:
    with pytest.raises(TProxyConfigError, match='tp.yaml: unknown key "redirect.inbound.prot"'):
        yaml_layer("redirect: {inbound: {prot: 1}}", "tp.yaml")
    with pytest.raises(TProxyConfigError, match=r"tp.yaml is not valid YAML: .*line 1"):
        yaml_layer("redirect: [", "tp.yaml")


# --- reinstall / uninstall text from a saved dump -------------------------------------------------------

SAVED = """# Generated by iptables-save v1.8.9
*nat
:PREROUTING ACCEPT [3:180]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:KUMA_MESH_INBOUND - [0:0]
:KUMA_MESH_INBOUND_REDIRECT - [0:0]
[0:0] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
[5:300] -A PREROUTING -p tcp -m comment --comment "kuma/mesh/transparent/proxy/x" -j KUMA_MESH_INBOUND
[0:0] -A OUTPUT -d 10.1.1.1/32 -m comment --comment "kuma/mesh/transparent/proxy/y" -j RETURN
[0:0] -A KUMA_MESH_INBOUND -p tcp -j KUMA_MESH_INBOUND_REDIRECT
[0:0] -A KUMA_MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006
COMMIT
"""


def test_removal_deletes_only_our_rules_then_our_chains() -> None:
    removal = parse_save(SAVED).removal_lines()
    assert removal == {
        "nat": [
            '-D PREROUTING -p tcp -m comment --comment "kuma/mesh/transparent/proxy/x" -j KUMA_MESH_INBOUND',
            '-D OUTPUT -d 10.1.1.1/32 -m comment --comment "kuma/mesh/transparent/proxy/y" -j RETURN',
            "-F KUMA_MESH_INBOUND",
            "-F KUMA_MESH_INBOUND_REDIRECT",
            "-X KUMA_MESH_INBOUND",
            "-X KUMA_MESH_INBOUND_REDIRECT",
        ]
    }


def test_reinstall_is_one_transaction_per_table_removal_first() -> None:
    text = restore_text(build(config_of({}), IPV4), parse_save(SAVED))
    lines = text.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT" and text.count("COMMIT") == 1
    assert lines.index("-X KUMA_MESH_INBOUND_REDIRECT") < lines.index(":KUMA_MESH_INBOUND - [0:0]")
    assert restore_text((), parse_save("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")) == ""


def _as_saved(tables) -> str:
    """What iptables-save prints after a clean install of `tables` on an empty namespace."""
    builtin = {"nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"), "raw": ("PREROUTING", "OUTPUT")}
    builtin["mangle"] = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
    text = ""
    for t in tables:
        chains = [f":{ch} ACCEPT [0:0]" for ch in builtin[t.table]] + [f":{ch} - [0:0]" for ch in t.chains]
        order = [r for r in t.rules if r.insert] + [r for r in t.rules if not r.insert]
        text += "\n".join([f"*{t.table}", *chains, *(r.saved for r in order), "COMMIT"]) + "\n"
    return text


def test_verify_accepts_exactly_the_built_rules() -> None:
    from transparent_proxy.apply import verify

    tables = build(config_of(OPTION_SETS["full"]), IPV4)
    saved = _as_saved(tables)
    assert verify(tables, parse_save(saved)) == []
    missing = saved.replace(tables[0].rules[-1].saved + "\n", "")
    assert verify(tables, parse_save(missing)) == [
        "nat/KUMA_MESH_OUTBOUND_REDIRECT: our rules differ from the built ones (missing, extra or reordered)"
    ]
    pushed_down = saved.replace(
        ":POSTROUTING ACCEPT [0:0]\n", ":POSTROUTING ACCEPT [0:0]\n-A OUTPUT -j ACCEPT\n", 1
    )
    assert verify(tables, parse_save(pushed_down)) == [
        "nat/OUTPUT: the exclusions are not at the top of the chain"
    ]
    leftover = saved + "*filter\n:KUMA_MESH_OLD - [0:0]\nCOMMIT\n"
    assert verify(tables, parse_save(leftover)) == ["filter: chain KUMA_MESH_OLD should not be there"]
