"""Test harness for the agent's integration tests (not the real control plane).

- `FakeControlPlane`: an HTTPS `/bootstrap` server (uvicorn in a thread, self-signed CA made with
  `cryptography`) that answers scripted errors first, then a STATIC Envoy bootstrap: one listener
  tcp-proxying to the test app, admin on a free port or on a Unix socket in the agent's work dir.
- `TestApp`: a threaded HTTP server; `/slow` answers after 2 s.
- `Agent`: `.venv/bin/kuma-dp run ...` as a real subprocess, killed at the end whatever happens.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

KUMA_DP = Path(sys.executable).parent / "kuma-dp"
SLOW_SECONDS = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    what: str, condition: Callable[[], object], timeout: float = 15.0, interval: float = 0.05
) -> object:
    """Poll `condition` until truthy; fail naming `what` and the last error."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


# --- certificates -------------------------------------------------------------------------------


def make_pki(tmp: Path, name: str = "cp") -> tuple[Path, Path, Path]:
    """A CA and a server cert for localhost/127.0.0.1/::1; returns (ca, cert, key) file paths."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    sans.append(x509.IPAddress(ipaddress.ip_address("::1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp / f"{name}-ca.pem", tmp / f"{name}.pem", tmp / f"{name}.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


# --- the static Envoy bootstrap the fake CP hands out ---------------------------------------------


def static_bootstrap(listener_port: int, app_port: int, admin: int | Path, tcp_proxy: bool = True) -> str:
    """A bootstrap with one inbound listener (tcp_proxy to the app) and admin on a port or pipe."""
    if isinstance(admin, Path):
        admin_address = {"pipe": {"path": str(admin), "mode": 0o600}}
    else:
        admin_address = {"socket_address": {"address": "127.0.0.1", "port_value": admin}}
    document = {
        "node": {"id": "default.test", "cluster": "test"},
        "admin": {"address": admin_address},
        "static_resources": {
            "listeners": [
                {
                    "name": f"inbound:127.0.0.1:{listener_port}",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                    "traffic_direction": "INBOUND",
                    "filter_chains": [{"filters": [_tcp_proxy()]}],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "app",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": app_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }
    return json.dumps(document)  # JSON is YAML


def _tcp_proxy() -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "inbound",
            "cluster": "app",
        },
    }


# --- fake control plane ---------------------------------------------------------------------------


@dataclass
class FakeControlPlane:
    """HTTPS /bootstrap: pops scripted (status, body) answers, then serves the static bootstrap."""

    cert: Path
    key: Path
    app_port: int
    admin_pipe: bool = False
    answers: list[tuple[int, bytes]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    listener_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    port: int = 0
    bootstrap_override: Callable[[dict[str, Any]], str] | None = None

    def routes(self) -> list[Route]:
        return [Route("/bootstrap", self._bootstrap, methods=["POST"])]

    def start(self) -> Self:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))  # 0 the first time; the same port after a stop
        self.port = sock.getsockname()[1]
        app = Starlette(routes=self.routes())
        config = uvicorn.Config(
            app,
            ssl_certfile=str(self.cert),
            ssl_keyfile=str(self.key),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,  # agents keep a connection open for renewals
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        wait_for("fake CP started", lambda: self._server.started, 10)
        return self

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    async def _bootstrap(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.requests.append(body)
        if self.answers:
            status, payload = self.answers.pop(0)
            return Response(payload, status_code=status, media_type="application/json")
        admin: int | Path = Path(body["workdir"]) / "admin.sock" if self.admin_pipe else self.admin_port
        if self.bootstrap_override is not None:
            text = self.bootstrap_override(body)
        else:
            text = static_bootstrap(self.listener_port, self.app_port, admin)
        encoded = base64.b64encode(text.encode()).decode()
        return JSONResponse({"bootstrap": encoded, "kumaSidecarConfiguration": {"networking": {}}})


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

        wait_for("agent READY", ready, timeout)

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
