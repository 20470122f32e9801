"""The fake control plane's identity side (not the real control plane), for the agent's identity and
token tests.

- `HarnessCA` signs CSRs the way docs/identity.md says the CP's built-in CA does (URI SANs from the
  CSR, serverAuth+clientAuth, CA:false, notBefore = now - 10 s), with a short lifetime for tests.
- `IdentityControlPlane` is fake_control_plane.py's FakeControlPlane plus `POST /certificate` per
  the contract: it records the `authorization` header of every request, can answer scripted errors,
  and can be stopped and started again on the same port (a CP that is away for a while).
- `HarnessAds`: a minimal ADS gRPC server that accepts streams only with an allowed token
  (UNAUTHENTICATED otherwise) and answers every subscription with an empty response.
- `tls_bootstrap`: the fake CP's static bootstrap whose listener terminates TLS with the identity
  from the contract's file-based SDS config; `peer_serial` reads the certificate Envoy serves.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.fake_control_plane import FakeControlPlane, static_bootstrap

BACKDATE = datetime.timedelta(seconds=10)


class HarnessCA:
    """A mesh CA, ECDSA P-256, self-signed."""

    def __init__(self, mesh: str = "default") -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"harness mesh CA {mesh}")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def sign(self, csr_pem: str, lifetime_s: float, default_uris: list[str]) -> x509.Certificate:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        assert csr.is_signature_valid
        try:
            uris = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            uris = [x509.UniformResourceIdentifier(u) for u in default_uris]
        now = datetime.datetime.now(datetime.UTC)
        usage = x509.KeyUsage(True, False, True, False, False, False, False, False, False)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")]))
            .issuer_name(self.name)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(seconds=lifetime_s))
            .add_extension(x509.SubjectAlternativeName(uris), critical=False)
            .add_extension(usage, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )


@dataclass
class CertificateRequest:
    authorization: str | None
    body: dict[str, Any]
    serial: int | None  # of the certificate handed out, if any
    at: float


@dataclass
class IdentityControlPlane(FakeControlPlane):
    """FakeControlPlane + `POST /certificate` (the harness implementation of the contract)."""

    ca: HarnessCA = field(default_factory=HarnessCA)
    lifetime_s: float = 6.0
    default_uris: list[str] = field(default_factory=list)
    cert_answers: list[tuple[int, bytes]] = field(default_factory=list)
    cert_requests: list[CertificateRequest] = field(default_factory=list)

    def routes(self) -> list[Route]:
        return [*super().routes(), Route("/certificate", self._certificate, methods=["POST"])]

    async def _certificate(self, request: Request) -> Response:
        import time  # noqa: PLC0415

        body = json.loads(await request.body())
        record = CertificateRequest(request.headers.get("authorization"), body, None, time.monotonic())
        self.cert_requests.append(record)
        if self.cert_answers:
            status, payload = self.cert_answers.pop(0)
            return Response(payload, status_code=status, media_type="application/json")
        leaf = self.ca.sign(body["csr"], self.lifetime_s, self.default_uris)
        record.serial = leaf.serial_number
        return JSONResponse(
            {
                "certificate": leaf.public_bytes(serialization.Encoding.PEM).decode(),
                "caBundle": self.ca.pem,
                "notAfter": leaf.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
                "serial": format(leaf.serial_number, "x"),
            }
        )

    def issued_serials(self) -> list[int]:
        return [r.serial for r in self.cert_requests if r.serial is not None]


def sds_config(workdir: Path, file_name: str) -> dict[str, Any]:
    """The contract's file-based SDS config."""
    sds = workdir / "identity" / "sds"
    return {
        "path_config_source": {"path": str(sds / file_name), "watched_directory": {"path": str(sds)}},
        "resource_api_version": "V3",
    }


def tls_bootstrap(
    workdir: Path, listener_port: int, app_port: int, admin_port: int, ads_port: int | None, token: str
) -> str:
    """The static bootstrap, its listener terminating TLS with the `identity` secret from the SDS
    files; with `ads_port`, an ADS stream (carrying `token`) to the harness ADS server for CDS."""
    document = json.loads(static_bootstrap(listener_port, app_port, admin_port))
    chain = document["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [
                    {"name": "identity", "sds_config": sds_config(workdir, "identity.yaml")}
                ]
            },
        },
    }
    if ads_port is not None:
        document["dynamic_resources"] = {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [
                    {
                        "envoy_grpc": {"cluster_name": "ads"},
                        "initial_metadata": [{"key": "authorization", "value": token}],
                    }
                ],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        }
        document["static_resources"]["clusters"].append(
            {
                "name": "ads",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
                "load_assignment": {
                    "cluster_name": "ads",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": "127.0.0.1", "port_value": ads_port}
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            }
        )
    return json.dumps(document)


def tls_bootstrap_for(cp: FakeControlPlane, ads_port: int | None = None) -> Callable[[dict[str, Any]], str]:
    def render(body: dict[str, Any]) -> str:
        workdir = Path(body["workdir"])
        return tls_bootstrap(
            workdir, cp.listener_port, cp.app_port, cp.admin_port, ads_port, body["dataplaneToken"]
        )

    return render


def peer_certificate(port: int, ca_pem: str) -> x509.Certificate:
    """Handshake with the listener (verifying against the mesh CA) and return the leaf it served."""
    context = ssl.create_default_context(cadata=ca_pem)
    context.check_hostname = False  # the workload certificate carries only URI SANs
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


# --- ADS --------------------------------------------------------------------------------------------


class HarnessAds:
    """ADS over plaintext h2 on loopback: streams with a token not in `allowed` get UNAUTHENTICATED."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = allowed
        self.streams: list[str | None] = []  # the authorization of every stream opened
        self.port = 0
        self._server: grpc.Server | None = None

    def start(self) -> HarnessAds:
        from envoy.service.discovery.v3 import ads_pb2_grpc  # noqa: PLC0415

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        servicer = type("Ads", (_AdsServicer, ads_pb2_grpc.AggregatedDiscoveryServiceServicer), {})(self)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    def restart(self) -> None:
        """Drop every stream and listen again on the same port (a CP restart)."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait(5)
            self._server = None


class _AdsServicer:
    def __init__(self, ads: HarnessAds) -> None:
        self._ads = ads

    def StreamAggregatedResources(  # noqa: N802 - gRPC's naming
        self, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        from envoy.service.discovery.v3 import discovery_pb2  # noqa: PLC0415

        token = dict(context.invocation_metadata()).get("authorization")
        self._ads.streams.append(token)
        if token not in self._ads.allowed:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "token rejected by the harness")
        for request in requests:
            if request.response_nonce:
                continue  # an ACK/NACK
            yield discovery_pb2.DiscoveryResponse(version_info="1", type_url=request.type_url, nonce="1")
