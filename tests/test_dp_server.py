"""The DP server: one TLS port that answers the agent's /bootstrap (HTTP/1.1) and gRPC (h2)."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from control_plane.dp_server.bootstrap_api import BootstrapSettings, create_bootstrap_app
from control_plane.dp_server.server import DpServer
from control_plane.dp_server.tls import resolve_tls_files
from control_plane.store.base import mesh_key
from control_plane.store.memory import MemoryStore
from labkit.ports import free_port

DATAPLANE = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "web-1",
    "networking": {
        "address": "127.0.0.1",
        "inbound": [{"port": 20001, "servicePort": 20002, "tags": {"kuma.io/service": "web"}}],
    },
}


def _echo_service(server: grpc.aio.Server) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"echo:" + request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))


@pytest.fixture
async def dp_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path, MemoryStore]]:
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    tls = resolve_tls_files(tmp_path, None, None)
    port = free_port()
    app = create_bootstrap_app(store, BootstrapSettings(dp_server_port=port))
    server = DpServer(tls, port, app, _echo_service, host="127.0.0.1")
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(server.started.wait(), 10)
    try:
        yield port, tls.cert_file, store
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _request(ca_pem: str, workdir: Path, **overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "mesh": "default",
        "name": "web-1",
        "proxyType": "dataplane",
        "dataplaneResource": json.dumps(DATAPLANE),
        "caCert": ca_pem,
        "workdir": str(workdir),
        "version": {"kumaDp": {"version": "0.1.0"}},
    }
    body.update(overrides)
    return body


async def test_generated_certificate_is_persisted_and_private(tmp_path: Path) -> None:
    first = resolve_tls_files(tmp_path, None, None)
    second = resolve_tls_files(tmp_path, None, None)
    assert first.cert_file.read_bytes() == second.cert_file.read_bytes()
    assert (first.key_file.stat().st_mode & 0o777) == 0o600


async def test_bootstrap_over_tls_renders_a_config_envoy_accepts(
    dp_server: tuple[int, Path, MemoryStore], tmp_path: Path, envoy_binary: Path
) -> None:
    port, ca, _ = dp_server
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as client:
        resp = await client.post(
            f"https://localhost:{port}/bootstrap", json=_request(ca.read_text(), tmp_path)
        )
    assert resp.status_code == 200, resp.text
    payload = resp.json()
    assert payload["kumaSidecarConfiguration"]["networking"] == {
        "address": "127.0.0.1",
        "isUsingTransparentProxy": False,
    }
    text = base64.b64decode(payload["bootstrap"]).decode()
    doc = yaml.safe_load(text)
    assert doc["node"]["id"] == "default.web-1"
    assert doc["node"]["cluster"] == "web"
    assert json.loads(doc["node"]["metadata"]["dataplane.resource"])["name"] == "web-1"
    # Who the proxy is, for its outbound access logs (read by Envoy, so the config is shared).
    assert doc["node"]["metadata"]["accessLog"] == {
        "sourceAddress": "127.0.0.1",
        "sourceAddressWithPort": "127.0.0.1:0",
        "sourceService": "web",
        "zone": "",
    }
    assert doc["admin"]["address"]["pipe"]["path"] == f"{tmp_path}/envoy-admin.sock"
    tls = doc["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    assert tls["sni"] == "localhost"
    san = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]
    assert san == {"san_type": "DNS", "matcher": {"exact": "localhost"}}
    config = tmp_path / "bootstrap.yaml"
    config.write_text(text)
    check = subprocess.run(
        [str(envoy_binary), "--mode", "validate", "-c", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


async def test_h2_connections_reach_grpc_on_the_same_port(dp_server: tuple[int, Path, MemoryStore]) -> None:
    port, ca, _ = dp_server
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
        echo = channel.unary_unary("/test.Echo/Echo")
        assert await echo(b"hi", timeout=5) == b"echo:hi"


@pytest.mark.parametrize(
    ("overrides", "status", "needle"),
    [
        (
            {"dataplaneResource": json.dumps({**DATAPLANE, "networking": {"address": "1.2.3.4"}})},
            422,
            "inbound",
        ),
        ({"dataplaneResource": json.dumps({**DATAPLANE, "mesh": "nope"}), "mesh": "nope"}, 422, "mesh"),
        ({"name": "other"}, 422, "does not match"),
        ({"dataplaneResource": "", "name": "unknown"}, 404, ""),
    ],
)
async def test_bootstrap_errors_name_the_input(
    dp_server: tuple[int, Path, MemoryStore], tmp_path: Path, overrides: dict, status: int, needle: str
) -> None:
    port, ca, _ = dp_server
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as client:
        resp = await client.post(
            f"https://localhost:{port}/bootstrap", json=_request(ca.read_text(), tmp_path, **overrides)
        )
    assert resp.status_code == status
    if status == 404:
        assert resp.content == b""
    else:
        assert needle in resp.text


async def test_malformed_json_is_400(dp_server: tuple[int, Path, MemoryStore]) -> None:
    port, ca, _ = dp_server
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as client:
        resp = await client.post(f"https://localhost:{port}/bootstrap", content=b"{not json")
    assert resp.status_code == 400
    assert "not valid JSON" in resp.json()["title"]


async def test_the_http_server_ending_stops_the_dp_server_with_a_clear_error(tmp_path: Path) -> None:
    """Not left as a TLS port that accepts and never answers: the control plane's TaskGroup sees
    the error and the process exits non-zero with it."""
    store = MemoryStore()
    tls = resolve_tls_files(tmp_path, None, None)
    port = free_port()
    app = create_bootstrap_app(store, BootstrapSettings(dp_server_port=port))
    # uvicorn's limit_max_requests: the bootstrap HTTP server ends after one request
    server = DpServer(tls, port, app, _echo_service, host="127.0.0.1", http_max_requests=1)
    task = asyncio.create_task(server.run())
    try:
        await asyncio.wait_for(server.started.wait(), 10)
        verify = ssl.create_default_context(cafile=str(tls.cert_file))
        async with httpx.AsyncClient(verify=verify) as client:
            await client.get(f"https://localhost:{port}/no-such-path")
        with pytest.raises(RuntimeError, match=r"DP server stopped serving: its HTTP server .* ended"):
            await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
