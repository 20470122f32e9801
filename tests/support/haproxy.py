"""Debian's haproxy as the TCP load balancer in front of several control-plane instances' DP
servers (TLS passes through: agents verify the instances' shared certificate end to end).

A server failing its TCP check (every 200 ms, down after 2 misses) leaves the rotation, so a
reconnecting Envoy or agent lands on a live instance; connections to an instance that dies are
cut (`on-marked-down shutdown-sessions`) rather than left hanging until a timeout.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from labkit.lab import Lab, Proc, wait_for
from labkit.ports import free_port, port_open

CONFIG = """\
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    retries 2
    option redispatch
frontend dp_servers
    bind 127.0.0.1:{port}
    default_backend instances
backend instances
    balance roundrobin
    default-server inter 200ms fall 2 rise 1 on-marked-down shutdown-sessions
{servers}
"""


def require_haproxy() -> str:
    binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if binary is None:
        message = "haproxy not installed (apt-get install haproxy; scripts/setup.sh does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: not skipping)")
        pytest.skip(message)
    return binary


def start_haproxy(lab: Lab, backends: list[int], name: str = "haproxy") -> tuple[Proc, int]:
    """haproxy in the foreground (stopped with the lab) balancing 127.0.0.1:<port> over `backends`
    (ports on 127.0.0.1); returns the process and its port."""
    binary = require_haproxy()
    port = free_port()
    servers = "\n".join(f"    server i{i} 127.0.0.1:{p} check" for i, p in enumerate(backends))
    config = lab.root / f"{name}.cfg"
    config.write_text(CONFIG.format(port=port, servers=servers))
    proc = lab.spawn(name, [binary, "-db", "-f", str(config)])
    wait_for(f"{name} on :{port}", lambda: port_open(port), 10, proc)
    return proc, port
