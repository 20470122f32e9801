"""mTLS between two REAL Envoys configured by our ADS server: web-1 calls backend through its
outbound; backend-1's inbound requires web's certificate (STRICT), also takes plaintext
(PERMISSIVE), tells the app who called (x-forwarded-client-cert), and obeys MeshTrafficPermissions.

The certificates are made by the test (a test CA signing `spiffe://default/web` and
`spiffe://default/backend`) and written as the agent writes them: file-based SDS in the work dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from control_plane.resources.registry import parse_resource, to_document
from control_plane.store.base import ResourceKey, mesh_key
from control_plane.xds.names import stat_prefix
from labkit.lab import ALLOW_ALL_PERMISSION
from labkit.ports import free_port
from labkit.waiting import eventually
from tests.support.mesh_ca import MeshCa
from tests.support.xds_cases import POLICY_YAML
from tests.support.xds_control_plane import Envoy, app_server, control_plane

pytestmark = pytest.mark.timeout(90)

DENY_KEY = ResourceKey("MeshTrafficPermission", "default", "deny-web-to-backend")
ALLOW_ALL = yaml.safe_load(ALLOW_ALL_PERMISSION)
ALLOW_ALL_KEY = ResourceKey(ALLOW_ALL["type"], "default", ALLOW_ALL["name"])


def mtls_mesh(mode: str) -> dict[str, Any]:
    backend = {"name": "ca-1", "type": "builtin", "mode": mode}
    return {"mtls": {"enabledBackend": "ca-1", "backends": [backend]}}


def spec_of(doc: dict[str, Any]) -> dict[str, Any]:
    """What `kumactl apply` stores: the validated document without its key."""
    return {k: v for k, v in to_document(parse_resource(doc)).items() if k not in ("type", "mesh", "name")}


@contextlib.asynccontextmanager
async def envoys(
    binary: Path, ads_port: int, *proxies: tuple[Path, dict[str, Any]]
) -> AsyncIterator[list[Envoy]]:
    started: list[Envoy] = []
    try:
        for workdir, resource in proxies:
            started.append(Envoy(binary, workdir, ads_port, resource))
        yield started
    except BaseException:
        for envoy in started:  # shown by pytest on failure
            print(f"--- {envoy.log}\n" + envoy.log.read_text(errors="replace")[-4000:])
        raise
    finally:
        for envoy in started:
            envoy.stop()


def xfcc_echo(head: str) -> bytes:
    """The app behind backend's inbound: answers with the x-forwarded-client-cert it received."""
    lines = head.split("\r\n")
    prefix = "x-forwarded-client-cert:"
    xfcc = next((line[len(prefix) :].strip() for line in lines if line.lower().startswith(prefix)), "none")
    return f"xfcc={xfcc}".encode()


async def get(port: int) -> httpx.Response:
    async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
        return await client.get(f"http://127.0.0.1:{port}/")


async def status(port: int) -> int | str:
    """The HTTP status, or the name of the transport error (reset, refused...)."""
    try:
        return (await get(port)).status_code
    except httpx.TransportError as exc:
        return type(exc).__name__


def tls_without_client_certificate(port: int, ca_pem: str) -> str:
    """What a TLS client holding no certificate (as `openssl s_client`) gets from the inbound."""
    context = ssl.create_default_context(cadata=ca_pem)
    context.check_hostname = False
    context.set_alpn_protocols(["kuma"])
    try:
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=2)) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
            data = tls.recv(1024)
            return "answered" if data else "closed"
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused: {exc}"


def dataplane(name: str, inbound: dict[str, Any], outbound: list[dict[str, Any]] = ()) -> dict[str, Any]:
    networking = {"address": "127.0.0.1", "inbound": [inbound], "outbound": list(outbound)}
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": networking}


def http_tags(service: str) -> dict[str, str]:
    return {"kuma.io/service": service, "kuma.io/protocol": "http"}


async def test_mtls_between_two_envoys_identity_permissive_and_permissions(
    envoy_binary: Path, tmp_path: Path
) -> None:
    ca = MeshCa()
    web_dir, backend_dir = tmp_path / "web-1", tmp_path / "backend-1"
    for workdir, service in ((web_dir, "web"), (backend_dir, "backend")):
        workdir.mkdir()
        ca.write_sds_files(workdir, service)
    outbound, backend_inbound = free_port(), free_port()
    async with app_server(xfcc_echo) as app_port, control_plane() as cp:
        cp.store.upsert(mesh_key("default"), mtls_mesh("STRICT"))
        web = dataplane(
            "web-1",
            {"port": free_port(), "servicePort": free_port(), "tags": http_tags("web")},
            [{"port": outbound, "tags": {"kuma.io/service": "backend"}}],
        )
        backend = dataplane(
            "backend-1", {"port": backend_inbound, "servicePort": app_port, "tags": http_tags("backend")}
        )
        async with envoys(envoy_binary, cp.port, (web_dir, web), (backend_dir, backend)) as (
            _,
            backend_envoy,
        ):
            # Over mTLS, and the app learns the caller's SPIFFE identity.
            # Zero trust: with mTLS on and no MeshTrafficPermission, nobody may call.
            denied = await eventually(lambda: _denied(get(outbound)), timeout=20)
            assert "RBAC: access denied" in denied.text
            cp.store.upsert(ALLOW_ALL_KEY, spec_of(ALLOW_ALL))
            # Each of web's Envoy workers pools its own connection to backend; one opened under the
            # old chain is judged by it once more (then closed, as the chain drains): wait until a
            # run of calls all pass, so no pooled connection of the deny-all era is left.
            await eventually(lambda: _all_ok(outbound, 6), timeout=10)

            response = await eventually(lambda: _ok(get(outbound)), timeout=10)
            assert "URI=spiffe://default/web" in response.text, response.text

            # STRICT: plaintext and certificate-less TLS are refused at the inbound.
            plaintext = await status(backend_inbound)
            assert isinstance(plaintext, str), f"plaintext got HTTP {plaintext}"
            refused = await asyncio.to_thread(tls_without_client_certificate, backend_inbound, ca.pem)
            assert refused != "answered", refused
            print(f"STRICT inbound: plaintext HTTP -> {plaintext}; TLS without a certificate -> {refused}")

            # PERMISSIVE: plaintext passes (without an identity), mTLS still works.
            cp.store.upsert(mesh_key("default"), mtls_mesh("PERMISSIVE"))
            plain = await eventually(lambda: _ok(get(backend_inbound)), timeout=10)
            assert plain.text == "xfcc=none"
            assert "URI=spiffe://default/web" in (await get(outbound)).text

            # A Deny permission for backend (more specific than the mesh-wide allow) stops web's
            # requests; deleting it restores them within 2 s.
            cp.store.upsert(mesh_key("default"), mtls_mesh("STRICT"))
            await eventually(lambda: _status_is(backend_inbound, str), timeout=10)
            cp.store.upsert(DENY_KEY, spec_of(yaml.safe_load(POLICY_YAML)))
            denied = await eventually(lambda: _denied(get(outbound)), timeout=5)
            assert denied.status_code == 403 and "RBAC: access denied" in denied.text
            cp.store.delete(DENY_KEY)
            started = time.monotonic()
            await eventually(lambda: _ok(get(outbound)), timeout=2)
            restored_in = time.monotonic() - started
            assert restored_in < 2
            print(f"traffic restored {restored_in * 1000:.0f} ms after the permission was deleted")

            # AllowWithShadowDeny: the request passes, and the backend's RBAC stats count a shadow deny.
            cp.store.upsert(
                DENY_KEY, spec_of(yaml.safe_load(POLICY_YAML.replace("Deny}", "AllowWithShadowDeny}")))
            )
            stat = f"http.{stat_prefix(f'inbound:127.0.0.1:{backend_inbound}')}.rbac.shadow_denied"
            await eventually(lambda: _counted(backend_envoy, stat, get(outbound)), timeout=5)


async def _counted(envoy: Envoy, stat: str, request: Any) -> bool:
    assert (await request).status_code == 200
    async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
        stats = (await client.get(f"http://127.0.0.1:{envoy.admin_port}/stats", params={"filter": stat})).text
    return any(line.startswith(f"{stat}: ") and int(line.split(": ")[1]) > 0 for line in stats.splitlines())


async def _all_ok(port: int, times: int) -> bool:
    for _ in range(times):
        if (await get(port)).status_code != 200:
            return False
    return True


async def _ok(request: Any) -> httpx.Response | None:
    response = await request
    return response if response.status_code == 200 else None


async def _denied(request: Any) -> httpx.Response | None:
    response = await request
    return response if response.status_code == 403 else None


async def _status_is(port: int, kind: type) -> bool:
    return isinstance(await status(port), kind)
