"""Proof that redirection works, as Kuma's validator does it, with two real processes.

A probe server runs as the proxy UID on 127.0.0.1:<inbound port> (where the inbound redirect
lands); a probe client, also a separate process, connects to 127.0.0.6 on a random port in
20000-30000, where nothing listens. Only the rules can carry that connection to the server: the
proxy UID's traffic to a local address other than 127.0.0.1 goes through the inbound redirect.
The server answers with a token, so a stray listener on the random port cannot pass.
(IPv6: the same with ::1 and ::6.) Each child changes UID with os.setuid after fork.

Ours on top: when the namespace has a route out, a client running as another UID connects to a
remote address and must land on a probe server on the outbound port.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - loaded before setuid: the children may not read the stdlib's files
import ipaddress
import os
import random
import select
import socket
import time
from dataclasses import dataclass

from transparent_proxy import constants as c
from transparent_proxy import netns
from transparent_proxy.config import TProxyConfig

TOKEN = b"kuma-tproxy-validation"


@dataclass(frozen=True)
class ValidationResult:
    ok: bool
    message: str
    elapsed_s: float


def _child(fn, *args) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Fork; run fn(write_fd, *args) in the child and exit with its status. Returns (pid, read_fd)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_fd)
            status = fn(write_fd, *args)
        except BaseException as exc:  # noqa: BLE001 - reported through the pipe
            os.write(write_fd, f"error: {exc}\n".encode())
        finally:
            os._exit(status)
    os.close(write_fd)
    return pid, read_fd


def _become(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _serve(out: int, uid: int, host: str, port: int, timeout_s: float) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, port))  # before dropping root: the port may be privileged
        server.listen(8)
        _become(uid)
        os.write(out, b"ready\n")
        server.settimeout(timeout_s)
        conn, _ = server.accept()
        with conn:
            conn.sendall(TOKEN)
    return 0


def _connect(out: int, uid: int, host: str, port: int, source: str, timeout_s: float) -> int:
    _become(uid)
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            bind = (source, 0) if source else None
            with socket.create_connection((host, port), timeout=0.5, source_address=bind) as conn:
                conn.settimeout(0.5)
                data = conn.recv(len(TOKEN))
            if data == TOKEN:
                os.write(out, b"ok\n")
                return 0
            last = f"connected to {host}:{port} but it was not the probe server (got {data!r})"
        except OSError as exc:
            last = f"connect to {host}:{port}: {exc.strerror or exc}"
        time.sleep(0.05)
    os.write(out, f"{last}\n".encode())
    return 1


def _read_line(fd: int, timeout_s: float) -> str:
    ready, _, _ = select.select([fd], [], [], timeout_s)
    return os.read(fd, 4096).decode(errors="replace").strip() if ready else ""


def probe(
    server: tuple[str, int],
    target: tuple[str, int, str],
    server_uid: int,
    client_uid: int,
    timeout_s: float,
) -> tuple[bool, str]:
    """Server process on `server`, client process connecting to `target` (host, port, source address
    or ""): did the connection land on the server?"""
    server_pid, server_out = _child(_serve, server_uid, *server, timeout_s)
    client_pid = None
    outcome = ""
    try:
        ready = _read_line(server_out, timeout_s)
        if ready != "ready":
            return False, f"probe server on {server[0]}:{server[1]} did not start: {ready or 'timeout'}"
        client_pid, client_out = _child(_connect, client_uid, *target, timeout_s)
        outcome = _read_line(client_out, timeout_s + 1)
        os.close(client_out)
    finally:
        for pid in (server_pid, client_pid):
            if pid:
                _reap(pid)
        os.close(server_out)
    if outcome == "ok":
        return (
            True,
            f"{target[0]}:{target[1]} (UID {client_uid}) reached the probe on {server[0]}:{server[1]}",
        )
    return False, f"{outcome or 'no answer'} (the rules should carry it to {server[0]}:{server[1]})"


def validate(
    inbound_port: int = c.REDIRECT_PORT_INBOUND,
    proxy_uid: int = c.DEFAULT_PROXY_UID,
    ipv6: bool = False,
    outbound: tuple[str, int, int] | None = None,
    timeout_s: float = c.VALIDATION_TIMEOUT_S,
) -> ValidationResult:
    """Kuma's check (inbound redirect of the proxy UID's local traffic) and, when `outbound` =
    (remote IP, outbound port, UID) is given, ours: another UID's connection to a remote address
    lands on the outbound port."""
    started = time.perf_counter()
    localhost = c.LOCALHOST_V6 if ipv6 else c.LOCALHOST_V4
    passthrough = c.INBOUND_PASSTHROUGH_SOURCE_V6 if ipv6 else c.VALIDATION_SERVER_IP
    # The client binds to localhost, as Kuma's does: from its own ::6 it would count as the proxy's
    # inbound passthrough traffic, which the rules rightly let through untouched.
    checks = [((localhost, inbound_port), (passthrough, _probe_port(), localhost), proxy_uid, proxy_uid)]
    if outbound:
        remote, outbound_port, client_uid = outbound
        checks.append(((localhost, outbound_port), (remote, _probe_port(), ""), proxy_uid, client_uid))
    messages = []
    for server, target, server_uid, client_uid in checks:
        ok, message = probe(server, target, server_uid, client_uid, timeout_s)
        if not ok:
            return ValidationResult(
                False, f"traffic is not redirected: {message}", time.perf_counter() - started
            )
        messages.append(message)
    return ValidationResult(True, "; ".join(messages), time.perf_counter() - started)


def _probe_port() -> int:
    return random.randint(*c.VALIDATION_PORT_RANGE)


def _reap(pid: int) -> None:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def outbound_probe_for(config: TProxyConfig) -> tuple[str, int, int] | None:
    """(remote IP, outbound port, client UID) for the outbound probe, or None when the namespace has
    no route out or the config exempts every candidate UID/address from redirection."""
    remote = netns.remote_probe_address()
    if remote is None or any(
        ipaddress.ip_address(remote) in ipaddress.ip_network(n) for n in config.exclude_outbound_ips
    ):
        return None
    excluded = [uids for excl in config.exclude_outbound_ports_for_uids for uids in excl.uids]
    for uid in c.VALIDATION_CLIENT_UIDS:
        if uid != config.proxy_uid and not any(lo <= uid <= hi for lo, hi in excluded):
            return remote, config.outbound_port, uid
    return None
