"""A name-only token may not rewrite what an administrator applied (issue 15, "Identity"):
through the real DP server (TLS) — `/bootstrap`, `POST /certificate` and an ADS stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.core.v3 import base_pb2

from control_plane.resources.dataplane import Dataplane
from control_plane.store.base import dataplane_key
from control_plane.tokens import TokenRequest, issue_token
from control_plane.xds.binding import conflict, registration_key
from control_plane.xds.client import AdsClient
from control_plane.xds.names import CLUSTER_TYPE
from tests.support.dp_server_harness import Cp, running_dp_server


def dataplane(service: str, port: int = 20001, **extra_tags: str) -> dict[str, Any]:
    tags = {"kuma.io/service": service, **extra_tags}
    return {
        "type": "Dataplane",
        "mesh": "default",
        "name": "web-1",
        "networking": {"address": "127.0.0.1", "inbound": [{"port": port, "tags": tags}]},
    }


def spec(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in ("type", "mesh", "name")}


NAME_ONLY = TokenRequest("default", "web-1", {}, 3600)


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[Cp]:
    async with running_dp_server(tmp_path / "cp") as server:
        yield server


def _csr(*uris: str) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        names = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    key = ec.generate_private_key(ec.SECP256R1())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


async def _bootstrap(cp: Cp, token: str, sent: dict[str, Any], tmp_path: Path) -> httpx.Response:
    body = {
        "mesh": "default", "name": "web-1", "proxyType": "dataplane", "dataplaneToken": token,
        "dataplaneResource": json.dumps(sent), "caCert": cp.ca.read_text(), "workdir": str(tmp_path),
    }  # fmt: skip
    async with cp.client() as client:
        return await client.post("/bootstrap", json=body)


async def _certificate(cp: Cp, token: str, *uris: str) -> httpx.Response:
    body = {"mesh": "default", "name": "web-1", "csr": _csr(*uris)}
    async with cp.client() as client:
        return await client.post("/certificate", json=body, headers={"authorization": token})


def _uris(response: httpx.Response) -> list[str]:
    leaf = x509.load_pem_x509_certificate(response.json()["certificate"].encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


async def test_name_only_token_cannot_claim_other_services_of_an_applied_dataplane(
    cp: Cp, tmp_path: Path
) -> None:
    """The finding: the store says `backend` (kumactl apply); the agent claims `payments`."""
    cp.store.upsert(dataplane_key("web-1"), spec(dataplane("backend")))
    token = issue_token(cp.store, NAME_ONLY)
    boot = await _bootstrap(cp, token, dataplane("payments"), tmp_path)
    assert boot.status_code == 409, boot.text
    title = boot.json()["title"]
    assert "dataplane default/web-1 was applied by an administrator with services ['backend']" in title
    assert "declares services ['payments']" in title
    # No certificate for payments; what the token and the applied Dataplane prove is backend.
    refused = await _certificate(cp, token, "spiffe://default/payments")
    assert refused.status_code == 403 and "spiffe://default/payments" in refused.json()["details"]
    issued = await _certificate(cp, token)
    assert issued.status_code == 200 and _uris(issued) == ["spiffe://default/backend"]
    # Same tags (other ports, addresses): the agent may bootstrap as before.
    same = await _bootstrap(cp, token, dataplane("backend", port=30001), tmp_path)
    assert same.status_code == 200, same.text


async def test_ads_stream_cannot_override_an_applied_dataplane(cp: Cp) -> None:
    cp.store.upsert(dataplane_key("web-1"), spec(dataplane("backend")))
    node = base_pb2.Node(id="default.web-1", cluster="payments")
    node.metadata.update({"dataplane.resource": json.dumps(dataplane("payments"))})
    creds = grpc.ssl_channel_credentials(root_certificates=cp.ca.read_bytes())
    token = issue_token(cp.store, NAME_ONLY)
    async with grpc.aio.secure_channel(f"localhost:{cp.port}", creds) as channel:
        client = AdsClient(channel, node, [("authorization", token)])
        try:
            client.send(CLUSTER_TYPE)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.recv(5)
        finally:
            await client.close()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "applied by an administrator" in str(refused.value.details())
    stored = cp.store.get(dataplane_key("web-1"))
    assert stored is not None and stored.spec == spec(dataplane("backend"))
    assert cp.store.get(registration_key("default", "web-1")) is None


async def test_a_dataplane_the_agent_registered_is_still_its_own(cp: Cp, tmp_path: Path) -> None:
    cp.store.upsert(registration_key("default", "web-1"), {})
    cp.store.upsert(dataplane_key("web-1"), spec(dataplane("backend")))
    token = issue_token(cp.store, NAME_ONLY)
    boot = await _bootstrap(cp, token, dataplane("payments"), tmp_path)
    assert boot.status_code == 200, boot.text
    issued = await _certificate(cp, token, "spiffe://default/payments")
    assert issued.status_code == 200 and _uris(issued) == ["spiffe://default/payments"]


def test_conflict_compares_tags_not_addresses_or_ports() -> None:
    applied = Dataplane.model_validate(dataplane("backend", version="v1"))
    assert conflict(applied, Dataplane.model_validate(dataplane("backend", 30001, version="v1"))) is None
    assert conflict(applied, Dataplane.model_validate(dataplane("backend", version="v2"))) is not None
    assert conflict(applied, Dataplane.model_validate(dataplane("payments", version="v1"))) is not None
