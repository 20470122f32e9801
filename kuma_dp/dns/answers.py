"""What to do with one DNS message: answer it here, forward it upstream, or drop it. Pure.

For a query whose name is a record (from the control plane): A → its VIPs; AAAA → the VIPs'
IPv4-mapped IPv6 form (::ffff:240.0.0.3: a connection to it leaves as IPv4, so the IPv4 redirect
catches it) when the host has IPv6, else no answer; any other type → no answer (NOERROR). Another
name under the mesh domain → NXDOMAIN, or NOERROR if names exist below it (RFC 8020); before the
first records arrived → SERVFAIL (we do not know yet; a resolver must not conclude the name does
not exist). Every other query is forwarded unchanged.

Parsing with dnslib reads the header and the question only (plus the additional section of a
query that has one, for the EDNS payload size), so garbage in the other sections costs nothing.
Documented outcomes for any input, which the property tests check on random bytes:
- shorter than a header, or a response (QR set): dropped (answering responses invites loops);
- a header but an unreadable question, or not exactly one question: FORMERR;
- an opcode other than QUERY: NOTIMP;
- otherwise one of the answers above, or Forward.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSHeader, DNSQuestion, DNSRecord
from dnslib.label import DNSBuffer

from kuma_common.dp_contract import DNS_DOMAIN
from kuma_dp.dns.records import Records

HEADER_SIZE = 12
CLASSIC_UDP_SIZE = 512  # what a client without EDNS can take (RFC 1035)
MAX_UDP_SIZE = 65535
_TYPE_OPT = 41
_CLASS_IN = 1
_OPCODE_QUERY = 0
_MAX_RRS_BEFORE_OPT = 8  # a query carries no answers; more than this is not worth reading
_MAPPED_PREFIX = ipaddress.IPv6Address("::ffff:0:0").packed[:12]


@dataclass(frozen=True)
class Reply:
    """Send `wire` back to the client."""

    wire: bytes
    rcode: int


@dataclass(frozen=True)
class Forward:
    """Send the query, unchanged, to the upstream resolvers."""

    wire: bytes
    question: bytes  # the question section as sent, to match the upstream's answer
    max_udp: int  # the largest UDP answer the client takes (EDNS payload size, else 512)


@dataclass(frozen=True)
class Drop:
    reason: str


Outcome = Reply | Forward | Drop


def handle(wire: bytes, records: Records | None, ipv6: bool, ttl: int, udp: bool = True) -> Outcome:
    """The outcome for one message received over UDP (`udp`) or TCP; never raises."""
    if len(wire) < HEADER_SIZE:
        return Drop("shorter than a DNS header")
    buffer = DNSBuffer(wire)
    try:
        header = DNSHeader.parse(buffer)
    except Exception:  # dnslib raises several types on garbage
        return Drop("unreadable header")
    if header.qr:
        return Drop("a response, not a query")
    if header.opcode != _OPCODE_QUERY:
        return Reply(_header_only(header, RCODE.NOTIMP), RCODE.NOTIMP)
    if header.q != 1:
        return Reply(_header_only(header, RCODE.FORMERR), RCODE.FORMERR)
    try:
        question = DNSQuestion.parse(buffer)
        labels = [label.decode("ascii").lower() for label in question.qname.label]
    except Exception:
        return Reply(_header_only(header, RCODE.FORMERR), RCODE.FORMERR)
    question_end = buffer.offset
    max_udp = _edns_payload_size(buffer, header) if udp else MAX_UDP_SIZE
    name = ".".join(labels)
    if not name or any("." in label for label in labels):  # the root, or a label holding a dot
        return Forward(wire, wire[HEADER_SIZE:question_end], max_udp)
    if records is None:  # nothing from the control plane yet
        if _under(name, DNS_DOMAIN):
            return Reply(_answer(header, question, RCODE.SERVFAIL, [], max_udp, aa=False), RCODE.SERVFAIL)
    elif records.lookup(name) is not None or records.in_domain(name):
        return _local(header, question, name, records, ipv6, ttl, max_udp)
    return Forward(wire, wire[HEADER_SIZE:question_end], max_udp)


def _local(
    header: DNSHeader, question: DNSQuestion, name: str, records: Records, ipv6: bool, ttl: int, max_udp: int
) -> Reply:
    vips = records.lookup(name)
    if vips is None:
        rcode = RCODE.NOERROR if records.exists(name) else RCODE.NXDOMAIN
        return Reply(_answer(header, question, rcode, [], max_udp), rcode)
    rrs: list[RR] = []
    if question.qclass == _CLASS_IN and question.qtype == QTYPE.A:
        rrs = [RR(question.qname, QTYPE.A, _CLASS_IN, ttl, A(str(vip))) for vip in vips]
    elif question.qclass == _CLASS_IN and question.qtype == QTYPE.AAAA and ipv6:
        rrs = [RR(question.qname, QTYPE.AAAA, _CLASS_IN, ttl, AAAA(list(mapped(vip)))) for vip in vips]
    return Reply(_answer(header, question, RCODE.NOERROR, rrs, max_udp), RCODE.NOERROR)


def mapped(vip: ipaddress.IPv4Address) -> bytes:
    """The IPv4-mapped IPv6 address (::ffff:a.b.c.d), packed."""
    return _MAPPED_PREFIX + vip.packed


def _answer(
    header: DNSHeader, question: DNSQuestion, rcode: int, rrs: list[RR], max_udp: int, aa: bool = True
) -> bytes:
    reply = DNSRecord(_reply_header(header, rcode, aa), questions=[question], rr=rrs)
    wire = bytes(reply.pack())
    if len(wire) > max_udp:  # too many VIPs for the client's UDP size: it retries over TCP
        reply = DNSRecord(_reply_header(header, rcode, aa, tc=True), questions=[question])
        wire = bytes(reply.pack())
    return wire


def _header_only(header: DNSHeader, rcode: int) -> bytes:
    return bytes(DNSRecord(_reply_header(header, rcode, aa=False)).pack())


def _reply_header(header: DNSHeader, rcode: int, aa: bool, tc: bool = False) -> DNSHeader:
    return DNSHeader(
        id=header.id,
        qr=1,
        opcode=header.opcode,
        aa=int(aa),
        tc=int(tc),
        rd=header.rd,
        ra=1,
        cd=header.cd,
        rcode=rcode,
    )


def _edns_payload_size(buffer: DNSBuffer, header: DNSHeader) -> int:
    """The client's EDNS UDP payload size (the OPT record's class), else 512."""
    if not header.ar or header.a + header.auth + header.ar > _MAX_RRS_BEFORE_OPT:
        return CLASSIC_UDP_SIZE
    try:
        for _ in range(header.a + header.auth + header.ar):
            rr = RR.parse(buffer)
            if rr.rtype == _TYPE_OPT:
                return min(max(CLASSIC_UDP_SIZE, rr.rclass), MAX_UDP_SIZE)
    except Exception:
        pass
    return CLASSIC_UDP_SIZE


def _under(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)


def servfail_for(wire: bytes) -> bytes | None:
    """A SERVFAIL answer to a query (question echoed), for a forward that failed; None if unreadable."""
    try:
        buffer = DNSBuffer(wire)
        header = DNSHeader.parse(buffer)
        question = DNSQuestion.parse(buffer)
    except Exception:
        return None
    return _answer(header, question, RCODE.SERVFAIL, [], MAX_UDP_SIZE, aa=False)


def is_truncated(answer: bytes) -> bool:
    return len(answer) >= HEADER_SIZE and bool(answer[2] & 0x02)


def matches(answer: bytes, query: bytes, question: bytes) -> bool:
    """Whether an upstream's message answers our query: same id, QR set, and the same question (in
    any letter case) unless it has none (some servers leave it out of an error)."""
    if len(answer) < HEADER_SIZE or answer[:2] != query[:2] or not answer[2] & 0x80:
        return False
    if answer[4:6] == b"\0\0":
        return True
    return answer[HEADER_SIZE : HEADER_SIZE + len(question)].lower() == question.lower()


class AnswerCache:
    """Local answers (NOERROR, NXDOMAIN) by the bytes of the query after its id: a repeated query
    (resolvers ask the same few names again and again) is answered without parsing, its id put in
    front of the stored answer. Bounded: emptied when full. Empty it when the records change."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._answers: dict[bytes, bytes] = {}

    def get(self, wire: bytes) -> bytes | None:
        found = self._answers.get(wire[2:])
        return None if found is None else wire[:2] + found

    def put(self, wire: bytes, reply: Reply) -> None:
        if reply.rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN) or len(wire) < HEADER_SIZE:
            return
        if len(self._answers) >= self.size:
            self._answers.clear()
        self._answers[wire[2:]] = reply.wire[2:]

    def clear(self) -> None:
        self._answers.clear()

    def __len__(self) -> int:
        return len(self._answers)
