"""A fake control plane for the agent's integration tests (not the real control plane).

`FakeControlPlane`: an HTTPS `/bootstrap` server (uvicorn in a thread, a self-signed CA made with
`cryptography` by `make_pki`) that answers scripted errors first, then a STATIC Envoy bootstrap
(`static_bootstrap`): one listener tcp-proxying to the test app, admin on a free port or on a Unix
socket in the agent's work dir.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labkit.ports import free_port
from labkit.waiting import wait_until

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
        wait_until(lambda: self._server.started, timeout=10, what="fake CP started")
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
