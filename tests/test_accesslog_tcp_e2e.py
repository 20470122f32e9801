"""The Tcp access-log backend end to end: real kuma-cp, real kuma-dp agents and Envoys, real
traffic, a TCP collector in the test. Lines reach the collector, exactly one per request; a dead
collector (nothing listening, then one that accepts and never reads) neither fails nor slows
requests, and the agent's memory stays bounded while it drops lines; the collector coming back
gets new lines. `kuma-dp run` says nothing about access logs while all is well."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from labkit.lab import ControlPlaneProc, Lab, dataplane
from labkit.ports import free_port
from labkit.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PADDING = "x" * 32_000  # big lines: tens of megabytes of logs from a thousand requests


class Collector:
    """A TCP collector on 127.0.0.1:`port` keeping what it receives, or (`reading=False`) one
    that accepts connections and never reads from them."""

    def __init__(self, port: int, reading: bool = True) -> None:
        self.data = bytearray()
        self.reading = reading
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._listener.accept()
                self._conns.append(conn)
                if self.reading:
                    threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                with self._lock:
                    self.data += chunk

    def lines(self) -> list[str]:
        with self._lock:
            return bytes(self.data).decode().splitlines()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread: no more accepts
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()  # reset: the collector is gone


def policy(collector_port: int) -> str:
    fmt = f"%KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE% %REQ(:PATH)% %RESPONSE_CODE% {PADDING}"
    return yaml.safe_dump(
        {
            "type": "MeshAccessLog",
            "mesh": "default",
            "name": "to-collector",
            "spec": {
                "targetRef": {"kind": "Mesh"},
                "to": [
                    {
                        "targetRef": {"kind": "Mesh"},
                        "default": {
                            "backends": [
                                {
                                    "type": "Tcp",
                                    "tcp": {
                                        "address": f"127.0.0.1:{collector_port}",
                                        "format": {"type": "Plain", "plain": fmt},
                                    },
                                }
                            ]
                        },
                    }
                ],
            },
        }
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def logged(collector: Collector, marker: str) -> list[str]:
    return [line for line in collector.lines() if f" {marker}" in line]


def test_tcp_backend_streams_through_the_agent_and_survives_dead_collectors(
    lab: Lab, cp: ControlPlaneProc
) -> None:
    backend_app, backend_in, web_app, web_in, web_out = (free_port() for _ in range(5))
    lab.start_app("backend", "backend-1", backend_app)
    backend = lab.start_agent(cp, dataplane("backend-1", "backend", backend_in, backend_app))
    web = lab.start_agent(cp, dataplane("web-1", "web", web_in, web_app, outbounds={"backend": web_out}))
    lab.wait_ready(backend)
    lab.wait_ready(web)
    port = free_port()
    collector = Collector(port)
    applied = lab.kumactl(cp, "apply", "-f", "-", input=policy(port))
    assert applied.returncode == 0, applied.stderr

    client = httpx.Client(base_url=f"http://127.0.0.1:{web_out}", timeout=10)

    def call(path: str) -> int:
        return client.get(path).status_code

    # The policy reaches web-1's Envoy: a probe's line arrives.
    wait_until(lambda: call("/probe") == 200 and logged(collector, "/probe"), timeout=30, what="probe logged")
    n = 20
    assert [call(f"/item/{i}") for i in range(n)] == [200] * n
    assert call("/marker") == 200
    wait_until(lambda: logged(collector, "/marker"), timeout=15, what="marker logged")
    items = [line for line in collector.lines() if " /item/" in line]
    assert items == [f"web->backend /item/{i} 200 {PADDING}" for i in range(n)]
    assert "access-log" not in web.proc.log.read_text()  # nothing on the console while all is well

    # Nothing listening: every request still succeeds, promptly.
    before = rss_kib(web.proc.popen.pid)
    collector.stop()
    started = time.monotonic()
    assert [call(f"/down/{i}") for i in range(200)] == [200] * 200
    assert time.monotonic() - started < 60  # generous: normally ~1 s

    # A collector that accepts and never reads: still no request fails, and while ~40 MB more of log
    # lines go its way the agent holds at most its bound (4 MiB) of them.
    hung = Collector(port, reading=False)
    wait_until(lambda: call("/hung-probe") == 200 and hung._conns, timeout=30, what="the agent connects")
    started = time.monotonic()
    assert [call(f"/hung/{i}") for i in range(1250)] == [200] * 1250
    assert time.monotonic() - started < 120  # generous
    assert call("/hung-end") == 200
    wait_until(lambda: "dropping the oldest" in web.proc.log.read_text(), timeout=15, what="drops reported")
    growth_mib = (rss_kib(web.proc.popen.pid) - before) / 1024
    assert growth_mib < 24, (
        f"the agent grew {growth_mib:.1f} MiB while 40 MB of lines went to a hung collector"
    )
    assert web.proc.log.read_text().count("dropping the oldest") == 1  # once per streak

    # The collector comes back: new lines reach it.
    hung.stop()
    back = Collector(port)
    wait_until(
        lambda: call("/back") == 200 and logged(back, "/back"), timeout=30, what="lines after the return"
    )
    back.stop()
    client.close()
