"""Probes for transparent-proxy tests: a server that says who answered and what the original
destination was (SO_ORIGINAL_DST — a stand-in for Envoy's `use_original_dst`), and a client
that connects as a given UID.

The client runs as a forked child of the test process (setuid after fork), because the
interpreter itself lives under /root and cannot start as another user.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.support.netns_lab import NetnsLab, probe_as

# Serves `tag:port` pairs on 0.0.0.0 and [::]; answers "<tag> <original destination ip>:<port>".
ORIGINAL_DST_SERVER = r"""
import socket, struct, sys, threading
SO_ORIGINAL_DST = 80
def original_dst(conn, family):
    if family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, ip = struct.unpack("!2xH4s8x", raw)
    else:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, ip = struct.unpack("!2xH4x16s4x", raw)
    return "%s:%d" % (socket.inet_ntop(family, ip), port)
def serve(family, host, port, tag):
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen(64)
    ready.release()
    while True:
        conn, _ = s.accept()
        try:
            where = original_dst(conn, family)
        except OSError:  # no conntrack entry (no NAT in this namespace): the local address it is
            where = "%s:%d" % conn.getsockname()[:2]
        conn.sendall(("%s %s\n" % (tag, where)).encode())
        conn.close()
ready = threading.Semaphore(0)
specs = [a.split(":") for a in sys.argv[1:]]
for tag, port in specs:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        threading.Thread(target=serve, args=(family, host, int(port), tag), daemon=True).start()
for _ in range(2 * len(specs)):
    ready.acquire()
print("ready", flush=True)
threading.Event().wait()
"""


def start_servers(lab: NetnsLab, ns: str, *specs: str) -> subprocess.Popen[str]:
    proc = lab.python(ns, ORIGINAL_DST_SERVER, *specs)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", (
        f"probe server in {ns} did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    )
    return proc


def _connect(host: str, port: int, source: str | None) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(2)
        if source:
            s.bind((source, 0))
        s.connect((host, port))
        return s.recv(200).decode().strip()


def connect(lab: NetnsLab, ns: str, host: str, port: int, uid: int, source: str | None = None) -> str:
    """Who answers a connection from `ns` as `uid` to host:port: e.g. "outbound 10.1.0.2:8080"."""
    return lab.call(ns, probe_as, uid, _connect, host, port, source)


def save(lab: NetnsLab, ns: str, tool: str) -> list[str]:
    """`<tool>` output without the # comment lines and with counters zeroed: comparable."""
    result = lab.run(ns, [tool], check=True)
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    return [_zero_counters(line) for line in lines]


def _zero_counters(line: str) -> str:
    if line.startswith(":") and line.endswith("]"):
        return line[: line.rindex("[")] + "[0:0]"
    return line


PYTHON = sys.executable


# Answers every UDP datagram on `tag:port` (0.0.0.0) with "<tag>".
# Answers every UDP datagram on `tag:host:port` with "<tag>"; `uid=N` first: run as N (unprivileged ports)
# (a DNS proxy must be the proxy user: the conntrack-zone rules know its answers by UID).
UDP_SERVER = r"""
import encodings.idna, os, socket, sys, threading
args = sys.argv[1:]
uid = int(args.pop(0)[4:]) if args and args[0].startswith("uid=") else None
if uid is not None:  # first: the owner match sees the UID that created the socket
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
sockets = []
for tag, host, port in (a.split(":") for a in args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    sockets.append((tag, s))
def serve(tag, s):
    while True:
        _, peer = s.recvfrom(512)
        s.sendto(tag.encode(), peer)
for tag, s in sockets:
    threading.Thread(target=serve, args=(tag, s), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def start_udp_servers(lab: NetnsLab, ns: str, *specs: str) -> subprocess.Popen[str]:
    proc = lab.python(ns, UDP_SERVER, *specs)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _ask_udp_as(uid: int, host: str, port: int) -> str:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        answer = ""
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.connect((host, port))
                s.send(b"q")
                answer = s.recv(200).decode()
        except OSError as exc:
            answer = f"error {exc.strerror or exc}"
        finally:
            os.write(write_fd, answer.encode())
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer


def ask_udp(lab: NetnsLab, ns: str, host: str, port: int, uid: int) -> str:
    """Who answers a UDP datagram from `ns` as `uid` to host:port."""
    return lab.call(ns, _ask_udp_as, uid, host, port)
