"""The agent's DNS server, its pure parts: records, answers, resolv.conf, settings. dnspython builds
the queries and reads the answers (a second, independent implementation of the wire format)."""

from __future__ import annotations

import ipaddress
import json

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kuma_dp.config import RunFlags, build_run_config
from kuma_dp.dns.answers import AnswerCache, Drop, Forward, Reply, handle, matches, servfail_for
from kuma_dp.dns.component import dns_wanted, dns_wanted_by_sidecar, is_transparent
from kuma_dp.dns.records import Records, RecordsError, parse_records
from kuma_dp.dns.resolv import Upstream, parse_resolv_conf
from kuma_dp.errors import ConfigError

BODY = {
    "domain": "mesh",
    "records": [
        {"name": "backend.mesh", "ips": ["240.0.0.3"]},
        {"name": "my-service.mesh", "ips": ["240.0.0.4", "240.0.0.5"]},
        {"name": "my.service.mesh", "ips": ["240.0.0.4", "240.0.0.5"]},  # Kuma's "_" → "." variant
    ],
}
RECORDS = parse_records(json.dumps(BODY).encode())


def ask(
    name: str, rdtype: str = "A", records: Records | None = RECORDS, ipv6: bool = True, **kw: object
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)
    outcome = handle(query.to_wire(), records, ipv6, 30)
    assert isinstance(outcome, Reply), outcome
    answer = dns.message.from_wire(outcome.wire)
    assert answer.id == query.id and answer.flags & dns.flags.QR
    assert answer.rcode() == outcome.rcode
    assert [q.to_text() for q in answer.question] == [q.to_text() for q in query.question]
    return answer


def texts(message: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in message.answer for rd in rrset)


# --- records ---------------------------------------------------------------------------------------


def test_records_parse_the_contract() -> None:
    assert RECORDS.domain == "mesh"
    assert RECORDS.lookup("backend.mesh") == (ipaddress.IPv4Address("240.0.0.3"),)
    assert RECORDS.lookup("my.service.mesh") == (
        ipaddress.IPv4Address("240.0.0.4"),
        ipaddress.IPv4Address("240.0.0.5"),
    )
    assert RECORDS.exists("service.mesh") and RECORDS.exists("mesh") and not RECORDS.exists("nope.mesh")
    assert (
        RECORDS.in_domain("a.b.mesh") and not RECORDS.in_domain("mesh.example") and RECORDS.in_domain("mesh")
    )


def test_records_normalise_names_and_merge_repeats() -> None:
    entries = [
        {"name": "Web.MESH.", "ips": ["240.0.0.1"]},
        {"name": "web.mesh", "ips": ["240.0.0.2", "240.0.0.1"]},
    ]
    records = parse_records(json.dumps({"records": entries}).encode())
    assert records.domain == "mesh"  # the contract's default
    assert [str(ip) for ip in records.lookup("web.mesh") or ()] == ["240.0.0.1", "240.0.0.2"]
    assert parse_records(b'{"domain": "mesh", "records": []}').names == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"records": {}}', '"records" is not a list'),
        (b'{"records": [1]}', "records[0] is not an object"),
        (b'{"records": [{"name": 1, "ips": []}]}', "records[0].name is not a string"),
        (b'{"records": [{"name": "a..mesh", "ips": []}]}', 'records[0].name "a..mesh" is not a DNS name'),
        (b'{"records": [{"name": "' + b"x" * 64 + b'.mesh", "ips": []}]}', "is not a DNS name"),
        (b'{"records": [{"name": "b.mesh"}]}', "records[0].ips is not a list"),
        (b'{"records": [{"name": "b.mesh", "ips": ["::1"]}]}', "records[0].ips"),
        (b'{"records": [{"name": "b.mesh", "ips": ["240.0.0.300"]}]}', "records[0].ips"),
        (b'{"domain": "", "records": []}', "domain"),
    ],
)
def test_bad_records_are_refused_naming_the_field(body: bytes, message: str) -> None:
    with pytest.raises(
        RecordsError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")
    ):
        parse_records(body)


# --- answers -----------------------------------------------------------------------------------------


def test_a_for_a_record_is_authoritative_with_a_short_ttl() -> None:
    answer = ask("backend.mesh")
    assert answer.rcode() == dns.rcode.NOERROR and texts(answer) == ["240.0.0.3"]
    assert answer.flags & dns.flags.AA and answer.flags & dns.flags.RA and answer.flags & dns.flags.RD
    assert answer.answer[0].ttl == 30
    assert texts(ask("MY.Service.mesh.")) == ["240.0.0.4", "240.0.0.5"]  # any case; the question as sent


def test_aaaa_is_the_ipv4_mapped_vip_with_ipv6_else_empty() -> None:
    assert texts(ask("backend.mesh", "AAAA", ipv6=True)) == ["::ffff:240.0.0.3"]
    empty = ask("backend.mesh", "AAAA", ipv6=False)
    assert empty.rcode() == dns.rcode.NOERROR and empty.answer == []


@pytest.mark.parametrize("rdtype", ["TXT", "MX", "SRV", "CNAME", "ANY", "HTTPS"])
def test_other_types_of_a_known_name_get_an_empty_noerror(rdtype: str) -> None:
    answer = ask("backend.mesh", rdtype)
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer == [] and answer.authority == []


def test_unknown_mesh_name_is_nxdomain_without_soa_but_parents_of_names_exist() -> None:
    answer = ask("nope.mesh")
    # no SOA in the authority section: resolvers do not cache the NXDOMAIN (RFC 2308), so a new
    # service resolves as soon as its record arrives
    assert answer.rcode() == dns.rcode.NXDOMAIN and answer.authority == []
    assert ask("deeper.backend.mesh").rcode() == dns.rcode.NXDOMAIN
    for existing in ("service.mesh", "mesh"):  # RFC 8020: names below them exist
        assert ask(existing).rcode() == dns.rcode.NOERROR and ask(existing).answer == []


def test_mesh_names_before_any_records_are_servfail_not_nxdomain() -> None:
    answer = ask("backend.mesh", records=None)
    assert answer.rcode() == dns.rcode.SERVFAIL and not answer.flags & dns.flags.AA


def test_other_names_are_forwarded_unchanged() -> None:
    query = dns.message.make_query("example.test", "A", use_edns=0, payload=4096)
    wire = query.to_wire()
    outcome = handle(wire, RECORDS, True, 30)
    assert isinstance(outcome, Forward) and outcome.wire == wire and outcome.max_udp == 4096
    assert outcome.question == wire[12 : 12 + len(outcome.question)] and outcome.question.endswith(
        b"\0\0\1\0\1"
    )
    plain = handle(dns.message.make_query("example.test", "A").to_wire(), None, True, 30)
    assert isinstance(plain, Forward) and plain.max_udp == 512
    assert isinstance(handle(wire, RECORDS, True, 30, udp=False), Forward)
    assert isinstance(handle(dns.message.make_query(".", "NS").to_wire(), RECORDS, True, 30), Forward)
    assert isinstance(
        handle(dns.message.make_query("mesh.example", "A").to_wire(), RECORDS, True, 30), Forward
    )


def test_records_outside_the_domain_are_answered_too() -> None:
    records = parse_records(b'{"records": [{"name": "db.internal", "ips": ["240.0.0.9"]}]}')
    assert texts(ask("db.internal", records=records)) == ["240.0.0.9"]


def test_an_answer_too_large_for_udp_is_truncated() -> None:
    many = {"records": [{"name": "wide.mesh", "ips": [f"240.0.1.{i}" for i in range(1, 60)]}]}
    records = parse_records(json.dumps(many).encode())
    truncated = ask("wide.mesh", records=records)
    assert truncated.flags & dns.flags.TC and truncated.answer == []
    assert len(texts(ask("wide.mesh", records=records, use_edns=0, payload=4096))) == 59
    tcp = handle(dns.message.make_query("wide.mesh", "A").to_wire(), records, True, 30, udp=False)
    assert isinstance(tcp, Reply) and len(texts(dns.message.from_wire(tcp.wire))) == 59


def test_malformed_messages_have_their_documented_outcomes() -> None:
    query = dns.message.make_query("backend.mesh", "A").to_wire()
    assert isinstance(handle(b"", RECORDS, True, 30), Drop)
    assert isinstance(handle(query[:11], RECORDS, True, 30), Drop)
    response = bytes([query[0], query[1], query[2] | 0x80]) + query[3:]
    assert isinstance(handle(response, RECORDS, True, 30), Drop)  # never answer an answer
    cut = handle(query[:-3], RECORDS, True, 30)
    assert isinstance(cut, Reply) and cut.rcode == dns.rcode.FORMERR
    assert dns.message.from_wire(cut.wire).id == dns.message.from_wire(query).id
    two_questions = query[:4] + b"\0\2" + query[6:]
    assert handle(two_questions, RECORDS, True, 30).rcode == dns.rcode.FORMERR  # type: ignore[union-attr]
    notify = query[:2] + bytes([query[2] | (4 << 3)]) + query[3:]
    assert handle(notify, RECORDS, True, 30).rcode == dns.rcode.NOTIMP  # type: ignore[union-attr]
    pointer_loop = query[:12] + b"\xc0\x0c\0\1\0\1"  # a name pointing at itself
    assert handle(pointer_loop, RECORDS, True, 30).rcode == dns.rcode.FORMERR  # type: ignore[union-attr]


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600), st.booleans(), st.booleans())
def test_random_bytes_never_raise(wire: bytes, udp: bool, with_records: bool) -> None:
    outcome = handle(wire, RECORDS if with_records else None, True, 30, udp=udp)
    if isinstance(outcome, Drop):
        assert len(wire) < 12 or wire[2] & 0x80 or outcome.reason
    elif isinstance(outcome, Reply):
        answer = dns.message.from_wire(outcome.wire)  # a reply is always well-formed
        assert answer.id == int.from_bytes(wire[:2], "big")
        assert answer.rcode() in (
            dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL, dns.rcode.FORMERR, dns.rcode.NOTIMP,
        )  # fmt: skip
    else:
        assert isinstance(outcome, Forward) and outcome.wire == wire


@settings(max_examples=1000, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(0, 5))
def test_garbage_after_a_valid_header_never_raises(tail: bytes, qdcount: int) -> None:
    header = b"\x12\x34\x01\x00" + qdcount.to_bytes(2, "big") + b"\0\0\0\0\0\1"
    outcome = handle(header + tail, RECORDS, True, 30)
    assert isinstance(outcome, Reply | Forward)


def test_upstream_answers_are_matched_on_id_and_question() -> None:
    query = dns.message.make_query("example.test", "A")
    wire = query.to_wire()
    forward = handle(wire, RECORDS, True, 30)
    assert isinstance(forward, Forward)
    answer = dns.message.make_response(query)
    assert matches(answer.to_wire(), wire, forward.question)
    answer.question[0].name = dns.name.from_text("EXAMPLE.test")  # 0x20 case randomization
    assert matches(answer.to_wire(), wire, forward.question)
    answer.id ^= 1
    assert not matches(answer.to_wire(), wire, forward.question)
    assert not matches(wire, wire, forward.question)  # not a response
    other = dns.message.make_response(dns.message.make_query("other.test", "A", id=query.id))
    assert not matches(other.to_wire(), wire, forward.question)


def test_servfail_for_a_failed_forward_echoes_the_question() -> None:
    query = dns.message.make_query("example.test", "AAAA")
    answer = dns.message.from_wire(servfail_for(query.to_wire()) or b"")
    assert (
        answer.id == query.id and answer.rcode() == dns.rcode.SERVFAIL and answer.question == query.question
    )
    assert servfail_for(b"\0" * 5) is None


# --- resolv.conf ----------------------------------------------------------------------------------


def test_resolv_conf_nameservers_in_order_without_ourselves() -> None:
    text = """
# generated
search example.com
nameserver 10.0.0.2
nameserver 127.0.0.53   # systemd-resolved's stub: a real resolver, the agent's UID is not redirected
nameserver fe80::1%eth0
nameserver 10.0.0.2
nameserver 10.0.0.9
options ndots:5
nameserver not-an-ip
"""
    assert parse_resolv_conf(text, 15053) == [
        Upstream("10.0.0.2"),
        Upstream("127.0.0.53"),
        Upstream("fe80::1%eth0"),
    ]
    assert parse_resolv_conf("nameserver 127.0.0.1\nnameserver ::1\nnameserver 0.0.0.0\n", 53) == []
    assert parse_resolv_conf("nameserver 127.0.0.1\n", 15053) == [Upstream("127.0.0.1")]
    assert parse_resolv_conf("nameserver ::ffff:10.1.1.1\n", 15053) == [Upstream("10.1.1.1")]
    assert parse_resolv_conf("", 15053) == []
    assert (
        Upstream("::1").describe() == "[::1]:53" and Upstream("10.0.0.2", 5353).describe() == "10.0.0.2:5353"
    )


# --- settings (Kuma's names) ----------------------------------------------------------------------


def test_dns_settings_defaults_flags_and_env() -> None:
    default = build_run_config(RunFlags(name="x"), {})
    assert (default.dns_enabled, default.dns_port, default.dns_port_source) == (True, 15053, "the default")
    off = build_run_config(RunFlags(name="x"), {"KUMA_DNS_ENABLED": "false"})
    assert off.dns_enabled is False
    assert build_run_config(RunFlags(name="x", dns_enabled=True), {"KUMA_DNS_ENABLED": "0"}).dns_enabled
    core = build_run_config(RunFlags(name="x"), {"KUMA_DNS_CORE_DNS_PORT": "5353"})
    assert (core.dns_port, core.dns_port_source) == (5353, "from KUMA_DNS_CORE_DNS_PORT")
    # Kuma 2.14: the embedded proxy's port wins unless it is 0
    both = {"KUMA_DNS_CORE_DNS_PORT": "5353", "KUMA_DNS_PROXY_PORT": "5454"}
    assert build_run_config(RunFlags(name="x"), both).dns_port == 5454
    assert build_run_config(RunFlags(name="x"), {**both, "KUMA_DNS_PROXY_PORT": "0"}).dns_port == 5353
    flag = build_run_config(RunFlags(name="x", dns_coredns_port=6000), both)
    assert (flag.dns_port, flag.dns_port_source) == (5454, "from KUMA_DNS_PROXY_PORT")
    flag = build_run_config(RunFlags(name="x", dns_coredns_port=6000, dns_proxy_port=0), both)
    assert (flag.dns_port, flag.dns_port_source) == (6000, "from --dns-coredns-port")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KUMA_DNS_ENABLED": "yes"}, 'KUMA_DNS_ENABLED: expected true or false, got "yes"'),
        (
            {"KUMA_DNS_PROXY_PORT": "70000"},
            'KUMA_DNS_PROXY_PORT: expected a port number 0-65535, got "70000"',
        ),
        ({"KUMA_DNS_CORE_DNS_PORT": "dns"}, "KUMA_DNS_CORE_DNS_PORT: expected a port number"),
    ],
)
def test_bad_dns_env_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_run_config(RunFlags(name="x"), env)


def test_dns_runs_for_transparent_dataplanes_only() -> None:
    ports = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}
    transparent = {
        "type": "Dataplane",
        "name": "a",
        "networking": {"address": "10.0.0.1", "transparentProxying": ports},
    }
    plain = {"type": "Dataplane", "name": "a", "networking": {"address": "10.0.0.1"}}
    assert is_transparent(json.dumps(transparent)) and not is_transparent(json.dumps(plain))
    assert not is_transparent(None)
    assert dns_wanted(build_run_config(RunFlags(), {}, transparent))
    assert not dns_wanted(build_run_config(RunFlags(), {}, plain))
    assert not dns_wanted(build_run_config(RunFlags(), {"KUMA_DNS_ENABLED": "false"}, transparent))
    # No resource: not known until the control plane answers the bootstrap request.
    assert dns_wanted(build_run_config(RunFlags(name="a"), {})) is None
    assert dns_wanted(build_run_config(RunFlags(name="a"), {"KUMA_DNS_ENABLED": "false"})) is False
    assert dns_wanted_by_sidecar({"networking": {"address": "10.0.0.1", "isUsingTransparentProxy": True}})
    assert not dns_wanted_by_sidecar({"networking": {"isUsingTransparentProxy": False}})
    assert not dns_wanted_by_sidecar({})


def test_answer_cache_puts_the_new_id_in_front_and_stays_bounded() -> None:
    cache = AnswerCache(size=2)
    first = dns.message.make_query("backend.mesh", "A")
    reply = handle(first.to_wire(), RECORDS, True, 30)
    assert isinstance(reply, Reply)
    cache.put(first.to_wire(), reply)
    again = dns.message.make_query("backend.mesh", "A")
    again.id = (first.id + 1) % 65536
    hit = dns.message.from_wire(cache.get(again.to_wire()) or b"")
    assert hit.id == again.id and texts(hit) == ["240.0.0.3"]
    assert cache.get(dns.message.make_query("BACKEND.mesh", "A").to_wire()) is None  # other bytes
    bad = handle(first.to_wire()[:-2], RECORDS, True, 30)
    assert isinstance(bad, Reply) and bad.rcode == dns.rcode.FORMERR
    cache.put(first.to_wire()[:-2], bad)
    assert len(cache) == 1  # errors are not kept
    for name in ("a.mesh", "b.mesh", "c.mesh"):
        wire = dns.message.make_query(name, "A").to_wire()
        cache.put(wire, handle(wire, RECORDS, True, 30))  # type: ignore[arg-type]
    assert len(cache) <= 2
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--dns-enabled"], True),  # as cobra's bool flags: bare, =false, or a separate value
        (["--dns-enabled=false"], False),
        (["--dns-enabled", "false"], False),
        (["--dns-enabled=0"], False),
        ([], None),  # not given: KUMA_DNS_ENABLED, else true
    ],
)
def test_dns_enabled_flag_forms(args: list[str], expected: bool | None) -> None:
    from kuma_dp.cli import run  # noqa: PLC0415

    assert run.make_context("run", [*args, "--name", "x"]).params["dns_enabled"] is expected
