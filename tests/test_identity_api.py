"""`/bootstrap`, `POST /certificate` and ADS through the real DP server (TLS), with dpToken authn."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.core.v3 import base_pb2

from control_plane.dp_server.authn import DpAuthenticator
from control_plane.dp_server.bootstrap_api import BootstrapSettings
from control_plane.dp_server.http_app import create_dp_http_app
from control_plane.dp_server.server import DpServer
from control_plane.dp_server.tls import resolve_tls_files
from control_plane.store.base import dataplane_key, mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.tokens import TokenRequest, current_signing_key, issue_token, revoke, sign_token
from control_plane.xds.client import AdsClient
from control_plane.xds.component import XdsComponent
from control_plane.xds.names import CLUSTER_TYPE
from labkit.ports import free_port

WEB_1 = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "web-1",
    "networking": {
        "address": "127.0.0.1",
        "inbound": [{"port": 20001, "servicePort": 20002, "tags": {"kuma.io/service": "web"}}],
    },
}
GOOD = TokenRequest("default", "web-1", {"kuma.io/service": ["web"]}, 3600)


@dataclass
class Cp:
    port: int
    ca: Path
    store: MemoryStore
    xds: XdsComponent

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.ca)))


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[Cp]:
    store = MemoryStore()
    for mesh in ("default", "other"):
        store.upsert(mesh_key(mesh), {})
    (tmp_path / "cp").mkdir()
    tls = resolve_tls_files(tmp_path / "cp", None, None)
    authn = DpAuthenticator(store, "dpToken")
    xds = XdsComponent(store, deregistration_delay_s=0.1, authenticate=authn.authenticate_stream)
    port = free_port()
    app = create_dp_http_app(store, BootstrapSettings(dp_server_port=port), authn)
    server = DpServer(tls, port, app, xds.register, host="127.0.0.1")
    tasks = [asyncio.create_task(server.run()), asyncio.create_task(xds.run())]
    await asyncio.wait_for(server.started.wait(), 10)
    try:
        yield Cp(port, tls.cert_file, store, xds)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def csr(*uris: str) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        names = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    key = ec.generate_private_key(ec.SECP256R1())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def bootstrap_body(cp: Cp, token: str | None, tmp_path: Path) -> dict[str, object]:
    return {
        "mesh": "default",
        "name": "web-1",
        "proxyType": "dataplane",
        "dataplaneToken": token or "",
        "dataplaneResource": json.dumps(WEB_1),
        "caCert": cp.ca.read_text(),
        "workdir": str(tmp_path),
    }


def certificate_body(name: str = "web-1", *uris: str) -> dict[str, str]:
    return {"mesh": "default", "name": name, "csr": csr(*uris)}


def _forged(store: MemoryStore) -> str:
    other = current_signing_key(store, "other")  # another mesh's key, with the same kid "1"
    return sign_token(GOOD, other.private_key, other.kid)


def _revoked(store: MemoryStore) -> str:
    token = issue_token(store, GOOD)
    revoke(store, "default", jwt.decode(token, options={"verify_signature": False})["jti"])
    return token


BAD_TOKENS: dict[str, tuple[str, Callable[[MemoryStore], str | None]]] = {
    "no token": ("missing", lambda s: None),
    "garbage": ("malformed", lambda s: "not-a-jwt"),
    "another mesh's key": ("bad signature", _forged),
    "expired": (
        "expired",
        lambda s: issue_token(s, TokenRequest("default", "web-1", {}, 60), time.time() - 3600),
    ),
    "revoked": ("revoked", _revoked),
    "token for web-2": ("wrong dataplane", lambda s: issue_token(s, TokenRequest("default", "web-2"))),
    "mesh other": ("wrong mesh", lambda s: issue_token(s, TokenRequest("other", "web-1"))),
    "tags it lacks": (
        "tags not allowed",
        lambda s: issue_token(s, TokenRequest("default", "web-1", {"kuma.io/service": ["backend"]})),
    ),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_get_401_with_the_reason_class_at_bootstrap_and_certificate(
    cp: Cp, tmp_path: Path, case: str
) -> None:
    reason, make = BAD_TOKENS[case]
    issue_token(cp.store, TokenRequest("default"))  # the mesh has its key 1
    cp.store.upsert(
        dataplane_key("web-1"), {k: v for k, v in WEB_1.items() if k not in ("type", "mesh", "name")}
    )
    token = make(cp.store)
    async with cp.client() as client:
        boot = await client.post("/bootstrap", json=bootstrap_body(cp, token, tmp_path))
        headers = {"authorization": token} if token else {}
        cert = await client.post("/certificate", json=certificate_body(), headers=headers)
    for response in (boot, cert):
        assert response.status_code == 401, response.text
        assert response.json() == {"title": "invalid dataplane token", "details": reason}


async def test_good_token_bootstraps_and_gets_exactly_its_spiffe_identity(
    cp: Cp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = issue_token(cp.store, GOOD)
    async with cp.client() as client:
        boot = await client.post("/bootstrap", json=bootstrap_body(cp, token, tmp_path))
        assert boot.status_code == 200, boot.text
        # Not in the store yet (its Envoy has not connected): known from the bootstrap.
        assert cp.store.get(dataplane_key("web-1")) is None
        cert = await client.post(
            "/certificate",
            json=certificate_body("web-1", "spiffe://default/web"),
            headers={"authorization": f"Bearer {token}"},
        )
    assert cert.status_code == 200, cert.text
    body = cert.json()
    leaf = x509.load_pem_x509_certificate(body["certificate"].encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [type(n) for n in san] == [x509.UniformResourceIdentifier]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://default/web"]
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(body["caBundle"].encode()))
    assert body["serial"] == format(leaf.serial_number, "x")
    assert body["notAfter"] == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert token not in caplog.text and token.rsplit(".", 1)[1] not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


@pytest.mark.parametrize(
    ("uris", "expected"),
    [
        (["spiffe://default/web", "spiffe://default/backend"], "another service (spiffe://default/backend)"),
        (["https://evil.example"], "an extra URI SAN (https://evil.example)"),
    ],
)
async def test_csr_asking_for_more_is_403_and_logged(
    cp: Cp, uris: list[str], expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    cp.store.upsert(
        dataplane_key("web-1"), {k: v for k, v in WEB_1.items() if k not in ("type", "mesh", "name")}
    )
    token = issue_token(cp.store, GOOD)
    async with cp.client() as client:
        response = await client.post(
            "/certificate", json=certificate_body("web-1", *uris), headers={"authorization": token}
        )
    assert response.status_code == 403 and expected in response.json()["details"]
    warning = [
        r for r in caplog.records if r.levelno == logging.WARNING and "default/web-1" in r.getMessage()
    ]
    assert warning and expected in warning[0].getMessage()


async def test_unknown_dataplane_404_empty_and_bad_bodies(cp: Cp) -> None:
    token = issue_token(cp.store, GOOD)
    # A mesh-wide token (no name) may ask about any Dataplane; web-1's token for web-9 is a 401.
    mesh_token = issue_token(cp.store, TokenRequest("default"))
    async with cp.client() as client:
        unknown = await client.post(
            "/certificate", json=certificate_body("web-9"), headers={"authorization": mesh_token}
        )
        not_json = await client.post("/certificate", content=b"{", headers={"authorization": token})
        no_csr = await client.post("/certificate", json={"mesh": "default", "name": "web-1"})
        cp.store.upsert(
            dataplane_key("web-1"), {k: v for k, v in WEB_1.items() if k not in ("type", "mesh", "name")}
        )
        bad_csr = await client.post(
            "/certificate",
            json={"mesh": "default", "name": "web-1", "csr": "junk"},
            headers={"authorization": token},
        )
    assert unknown.status_code == 404 and unknown.content == b""
    assert not_json.status_code == 400
    assert no_csr.status_code == 400 and "csr is required" in no_csr.json()["title"]
    assert bad_csr.status_code == 422 and "PKCS#10" in bad_csr.json()["details"]


async def _ads_status(cp: Cp, token: str | None) -> grpc.StatusCode | None:
    node = base_pb2.Node(id="default.web-1", cluster="web")
    node.metadata.update({"dataplane.resource": json.dumps(WEB_1)})
    creds = grpc.ssl_channel_credentials(root_certificates=cp.ca.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{cp.port}", creds) as channel:
        client = AdsClient(channel, node, [("authorization", token)] if token else [])
        try:
            client.send(CLUSTER_TYPE)
            await client.recv(5)
            return None
        except grpc.aio.AioRpcError as exc:
            assert exc.details() in ("missing", "expired", "wrong mesh", "malformed")
            return exc.code()
        finally:
            await client.close()


async def test_ads_stream_refused_before_registration_then_accepted(cp: Cp) -> None:
    assert await _ads_status(cp, None) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        await _ads_status(cp, issue_token(cp.store, TokenRequest("other", "web-1")))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    assert cp.store.get(dataplane_key("web-1")) is None and cp.xds.connected_nodes() == []
    assert await _ads_status(cp, issue_token(cp.store, GOOD)) is None


async def test_the_dataplane_sent_with_the_csr_serves_an_instance_that_never_saw_the_bootstrap(
    cp: Cp,
) -> None:
    # Several control-plane instances: the bootstrap went to another one, this one knows nothing.
    token = issue_token(cp.store, GOOD)
    headers = {"authorization": f"Bearer {token}"}
    body = {**certificate_body("web-1", "spiffe://default/web"), "dataplane": json.dumps(WEB_1)}
    async with cp.client() as client:
        without = await client.post(
            "/certificate", json=certificate_body("web-1", "spiffe://default/web"), headers=headers
        )
        issued = await client.post("/certificate", json=body, headers=headers)
        # What the token allows is still the rule: a Dataplane claiming another service gets no
        # certificate for it.
        greedy = {**WEB_1, "networking": {**WEB_1["networking"], "inbound": [
            {"port": 21011, "tags": {"kuma.io/service": "backend"}}]}}  # fmt: skip
        other_token = issue_token(cp.store, TokenRequest("default", "web-1", {"kuma.io/service": ["web"]}))
        refused = await client.post(
            "/certificate",
            json={**certificate_body("web-1", "spiffe://default/backend"), "dataplane": json.dumps(greedy)},
            headers={"authorization": other_token},
        )
        invalid = await client.post(
            "/certificate", json={**body, "dataplane": json.dumps({"type": "Dataplane"})}, headers=headers
        )
        renamed = await client.post(
            "/certificate",
            json={**body, "dataplane": json.dumps({**WEB_1, "name": "web-2"})},
            headers=headers,
        )
    assert without.status_code == 404
    assert issued.status_code == 200, issued.text
    assert refused.status_code == 401 and "tags not allowed" in refused.text
    assert invalid.status_code == 400 and "dataplane is not a valid Dataplane" in invalid.json()["title"]
    assert renamed.status_code == 400 and "default/web-2" in renamed.json()["title"]
