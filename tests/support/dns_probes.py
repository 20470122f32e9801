"""DNS probes for transparent-proxy tests: a responder that answers DNS-framed queries over UDP and TCP
with a tag (who answered) and the address the query was sent to, and a client that sends one query
as a given UID from inside a namespace.

Framing is DNS's: a UDP datagram, or a 2-byte length prefix over TCP; a query is a 2-byte id and a
question, the answer repeats the id, so a stray datagram is never taken for the answer.
The TCP answer names the query's original destination (SO_ORIGINAL_DST when it was redirected),
so a redirected query says where it was going.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess

from tests.support.netns_lab import NetnsLab, probe_as

# argv[1]: JSON {"uid": N or null, "listen": [[tag, host, port], ...]}; UDP and TCP on each.
DNS_RESPONDER = r"""
import encodings.idna, json, os, socket, struct, sys, threading
spec = json.loads(sys.argv[1])
if spec["uid"] is not None:  # first: the owner match sees the UID that created the socket
    os.setgroups([]); os.setgid(spec["uid"]); os.setuid(spec["uid"])
SO_ORIGINAL_DST = 80
def where(conn, family):
    try:
        if family == socket.AF_INET:
            port, ip = struct.unpack("!2xH4s8x", conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16))
        else:
            port, ip = struct.unpack("!2xH4x16s4x", conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28))
        host = socket.inet_ntop(family, ip)
    except OSError:  # not redirected: the address it reached
        host, port = conn.getsockname()[:2]
    return "[%s]:%d" % (host, port) if family == socket.AF_INET6 else "%s:%d" % (host, port)
def answer(query, tag, dest):
    return query[:2] + ("%s %s" % (tag, dest)).encode()
def udp(s, tag, family):
    dest = where(s, family)
    while True:
        query, peer = s.recvfrom(512)
        s.sendto(answer(query, tag, dest), peer)
def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data
def tcp_one(conn, tag, family):
    with conn:
        try:
            (size,) = struct.unpack("!H", recv_exact(conn, 2))
            data = answer(recv_exact(conn, size), tag, where(conn, family))
            conn.sendall(struct.pack("!H", len(data)) + data)
        except OSError:
            pass
def tcp(s, tag, family):
    while True:
        conn, _ = s.accept()
        threading.Thread(target=tcp_one, args=(conn, tag, family), daemon=True).start()
for tag, host, port in spec["listen"]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind, serve in ((socket.SOCK_DGRAM, udp), (socket.SOCK_STREAM, tcp)):
        s = socket.socket(family, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen(64)
        threading.Thread(target=serve, args=(s, tag, family), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def start_dns_responder(
    lab: NetnsLab, ns: str, *listen: tuple[str, str, int], uid: int | None = None
) -> None:
    """Answer UDP and TCP queries on each (tag, host, port) in `ns` (as `uid`, else root) until the
    lab closes; returns once every socket is bound."""
    spec = json.dumps({"uid": uid, "listen": [list(item) for item in listen]})
    proc: subprocess.Popen[str] = lab.python(ns, DNS_RESPONDER, spec)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", (
        f"DNS responder in {ns} did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    )


def _query(proto: str, host: str, port: int, timeout_s: float) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    query_id = secrets.token_bytes(2)
    query = query_id + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07backend\x04mesh\x00\x00\x01\x00\x01"
    if proto == "udp":
        with socket.socket(family, socket.SOCK_DGRAM) as s:  # connected, as resolvers do: answers
            s.settimeout(timeout_s)  # from any other source than the queried address are dropped
            s.connect((host, port))
            s.send(query)
            data = s.recv(512)
    else:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(len(query).to_bytes(2, "big") + query)
            size = int.from_bytes(_recv_exact(s, 2), "big")
            data = _recv_exact(s, size)
    if data[:2] != query_id:
        return f"error answer for another query: {data!r}"
    return data[2:].decode()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed before the answer")
        data += chunk
    return data


def dns_query(
    lab: NetnsLab, ns: str, proto: str, host: str, uid: int, port: int = 53, timeout_s: float = 2.0
) -> str:
    """Who answers one DNS query from `ns` as `uid` to host:port over `proto` (udp/tcp), and where
    the query was going: e.g. "dns-proxy 10.77.0.2:53" over TCP; "error ..." when none does."""
    return lab.call(ns, probe_as, uid, _query, proto, host, port, timeout_s)
