"""The agent under test for the agent's integration tests: `kuma-dp run` as a real subprocess
(`Agent`, killed at the end whatever happens), a threaded HTTP app behind its Envoy (`TestApp`;
`/slow` answers after 2 s), and the fixtures the test_agent_* modules import (`pki`, `app`, `cp`:
a FakeControlPlane, `start_agent`).
"""

from __future__ import annotations

import http.server
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from labkit.ports import free_port
from labkit.waiting import wait_until
from tests.support.fake_control_plane import FakeControlPlane, make_pki

KUMA_DP = Path(sys.executable).parent / "kuma-dp"
SLOW_SECONDS = 2.0


# --- test app -------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/slow"):
            time.sleep(SLOW_SECONDS)
        body = f"hello from {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class TestApp:
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self._server = _ThreadingServer(("127.0.0.1", 0), _Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- the agent under test -------------------------------------------------------------------------


class Agent:
    """`kuma-dp run` as a subprocess; its stderr goes to a file (read with `.log()`)."""

    def __init__(self, args: list[str], tmp: Path, env: dict[str, str] | None = None) -> None:
        self.readiness_port = free_port()
        self.log_path = tmp / f"agent-{self.readiness_port}.log"
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KUMA_")},
            "KUMA_READINESS_PORT": str(self.readiness_port),
            "KUMA_CONTROL_PLANE_RETRY_BACKOFF": "100ms",
            **(env or {}),
        }
        self._log_file = self.log_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(KUMA_DP), "run", *args], env=full_env, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.readiness_port}/ready"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def readiness(self) -> tuple[int, str]:
        response = httpx.get(self.ready_url, timeout=2)
        return response.status_code, response.text

    def wait_ready(self, timeout: float = 15.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log()}")
            return self.readiness() == (200, "READY")

        wait_until(ready, timeout=timeout, what="agent READY")

    def wait_exit(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent still running after {timeout}s:\n{self.log()}") from None

    def envoy_pids(self) -> list[int]:
        import psutil  # noqa: PLC0415

        return [p.pid for p in psutil.Process(self.proc.pid).children() if "envoy" in p.name()]

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # Envoy follows through PR_SET_PDEATHSIG
            self.proc.wait(10)
        self._log_file.close()


# --- fixtures (imported by the test_agent_* modules) ----------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_pki(tmp_path)


@pytest.fixture
def app() -> Iterator[TestApp]:
    server = TestApp()
    yield server
    server.stop()


@pytest.fixture
def cp(pki: tuple[Path, Path, Path], app: TestApp) -> Iterator[FakeControlPlane]:
    server = FakeControlPlane(pki[1], pki[2], app.port).start()
    yield server
    server.stop()


@pytest.fixture
def start_agent(tmp_path: Path, pki: tuple[Path, Path, Path]) -> Iterator[Callable[..., Agent]]:
    """Start `kuma-dp run` against a CP (trusting the test CA); every agent is killed at the end."""
    started: list[Agent] = []

    def start(cp: FakeControlPlane | None, *args: str, env: dict[str, str] | None = None) -> Agent:
        base = ["--cp-address", cp.url, "--ca-cert-file", str(pki[0])] if cp is not None else []
        agent = Agent([*base, *args], tmp_path, env)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.close()
