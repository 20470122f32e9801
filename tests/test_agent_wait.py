"""`kuma-dp wait`: returns 0 once the URL answers 200, exits 1 with a message at the timeout."""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from labkit.ports import free_port
from tests.support.agent_process import KUMA_DP, Agent, app, cp, pki, start_agent
from tests.support.fake_control_plane import FakeControlPlane

__all__ = ["app", "cp", "pki", "start_agent"]  # fixtures


class _NotReadyThenReady(http.server.BaseHTTPRequestHandler):
    ready_after = 0.0

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        ready = time.monotonic() >= self.ready_after
        body = b"READY" if ready else b"NOT_READY"
        self.send_response(200 if ready else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def readiness_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotReadyThenReady)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_wait(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([str(KUMA_DP), "wait", *args], capture_output=True, text=True, timeout=30)
    return result, time.monotonic() - started


def test_wait_returns_once_ready(readiness_server: http.server.HTTPServer) -> None:
    _NotReadyThenReady.ready_after = time.monotonic() + 1.0
    url = f"http://127.0.0.1:{readiness_server.server_address[1]}/ready"
    result, elapsed = run_wait("--url", url, "--timeout", "10s", "--interval", "100ms")
    assert result.returncode == 0, result.stderr
    assert "the dataplane is ready" in result.stderr
    assert 0.9 < elapsed < 5


def test_wait_times_out_with_a_message() -> None:
    url = f"http://127.0.0.1:{free_port()}/ready"
    result, elapsed = run_wait("--url", url, "--timeout", "1s", "--check-frequency", "200ms")
    assert result.returncode == 1
    assert f"Error: {url} was not ready after 1s (last: ConnectError" in result.stderr
    assert "Traceback" not in result.stderr
    assert 0.9 < elapsed < 5


def test_wait_reports_the_last_status(readiness_server: http.server.HTTPServer) -> None:
    _NotReadyThenReady.ready_after = time.monotonic() + 60
    url = f"http://127.0.0.1:{readiness_server.server_address[1]}/ready"
    result, _ = run_wait("--url", url, "--timeout", "500ms", "--interval", "100ms")
    assert result.returncode == 1
    assert "(last: HTTP 503 NOT_READY)" in result.stderr


def test_wait_for_a_real_agent(start_agent: Callable[..., Agent], cp: FakeControlPlane) -> None:
    agent = start_agent(cp, "--name", "dp-1")
    result, _ = run_wait("--url", agent.ready_url, "--timeout", "20s", "--interval", "200ms")
    assert result.returncode == 0, result.stderr + agent.log()
    assert agent.readiness() == (200, "READY")
