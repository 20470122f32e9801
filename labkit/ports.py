"""Loopback TCP ports: one free to listen on, and whether one accepts connections."""

from __future__ import annotations

import socket
import threading
from collections import deque

# Ports handed out lately by this process: the kernel may pick a port again as soon as our probe
# socket closes, and two picks before either is bound (a control plane's DP and diagnostics
# ports) then collide. Remembered, they are not handed out twice.
_RECENT: deque[int] = deque(maxlen=4096)
_RECENT_LOCK = threading.Lock()


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for an ephemeral bind), and not one
    this process handed out lately."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with _RECENT_LOCK:
            if port not in _RECENT:
                _RECENT.append(port)
                return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0
