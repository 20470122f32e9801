"""MeshTLS with real Envoys over the mesh's real mTLS (a test CA's certificates in SDS files):
a minimum TLS version refuses older clients at the inbound while mesh traffic goes on (outbound
clusters speak it too), Permissive on one service opens its inbound to plaintext while the rest of
the mesh stays Strict; the engine's merge; and `kumactl apply` refusing every invalid field."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from control_plane.policies.loading import mesh_policies
from control_plane.policies.registry import BY_KIND
from control_plane.resources.dataplane import Dataplane
from control_plane.resources.mesh import Mesh
from control_plane.resources.registry import parse_resource
from control_plane.xds.generate.snapshot import ProxyContext, generate_snapshot
from control_plane.xds.names import LISTENER_TYPE
from labkit.waiting import eventually
from tests.support.kumactl_api import assert_refused, config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.mesh_ca import MeshCa
from tests.support.policy_mesh import Proxy, constant, policy_mesh
from tests.support.policy_mtls import with_mtls

pytestmark = pytest.mark.timeout(60)

MESH_TLS = BY_KIND["MeshTLS"]


def mesh_tls(name: str, default: dict[str, Any], top: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"rules": [{"default": default}]}
    if top is not None:
        spec["targetRef"] = top
    return {"type": "MeshTLS", "mesh": "default", "name": name, "spec": spec}


def client_context(ca: MeshCa, workdir: Path, service: str, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A mesh client (a certificate of `service` from the mesh's CA) that speaks TLS up to `version`."""
    key, cert = ca.issue(service)
    key_file, cert_file = workdir / f"{service}.key", workdir / f"{service}.crt"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca.pem)
    context.check_hostname = False  # the proxy's certificate names its SPIFFE ID, not a host
    context.load_cert_chain(cert_file, key_file)
    context.maximum_version = version
    return context


def https_get(port: int, context: ssl.SSLContext) -> str:
    """GET / over TLS to 127.0.0.1:`port`: the status line and the TLS version, or why it failed."""
    try:
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=3)) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
            status = tls.recv(1024).split(b"\r\n", 1)[0].decode()
            return f"{status} over {tls.version()}"
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused: {exc}"


async def plaintext_get(port: int) -> int | str:
    """The HTTP status of a plaintext GET / to an inbound, or the transport error's name."""
    try:
        async with httpx.AsyncClient(timeout=3, trust_env=False) as client:
            return (await client.get(f"http://127.0.0.1:{port}/")).status_code
    except httpx.TransportError as exc:
        return type(exc).__name__


async def inbound_status_is(proxy: Proxy, wanted: type) -> bool:
    return isinstance(await plaintext_get(proxy.inbound_ports[0]), wanted)


async def test_minimum_tls13_refuses_a_tls12_client_and_mesh_traffic_goes_on(
    envoy_binary: Path, tmp_path: Path
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        ca = await with_mtls(mesh, {"backend-1": "backend", "web-1": "web"}, "STRICT")
        backend, _ = await mesh.backend("backend-1", "backend", constant(b"backend"))
        web = await mesh.client("web-1", ["backend"])
        port = backend.inbound_ports[0]
        tls12 = client_context(ca, tmp_path, "web", ssl.TLSVersion.TLSv1_2)
        tls13 = client_context(ca, tmp_path, "web", ssl.TLSVersion.TLSv1_3)
        assert await asyncio.to_thread(https_get, port, tls12) == "HTTP/1.1 200 OK over TLSv1.2"

        await mesh.apply(mesh_tls("tls13", {"tlsVersion": {"min": "TLS13"}}))
        refused = await eventually(lambda: _refused(port, tls12), timeout=10)
        assert "refused" in refused and "VERSION" in refused.upper(), refused
        print(f"TLS 1.2 client: {refused}")
        assert await asyncio.to_thread(https_get, port, tls13) == "HTTP/1.1 200 OK over TLSv1.3"
        # web's Envoy calls backend with TLS 1.3 too (Envoy's clients stop at TLS 1.2 by default).
        response = await web.get("backend", "/")
        assert response.status_code == 200 and response.text == "backend"
        params = (await web.cluster("backend"))["transport_socket"]["typed_config"]["common_tls_context"]
        want = {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}
        assert params["tls_params"] == want


async def _refused(port: int, context: ssl.SSLContext) -> str | None:
    result = await asyncio.to_thread(https_get, port, context)
    return result if result.startswith("refused") else None


async def test_permissive_on_one_service_takes_plaintext_while_the_mesh_stays_strict(
    envoy_binary: Path, tmp_path: Path
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        services = {"backend-1": "backend", "other-1": "other", "web-1": "web"}
        await with_mtls(mesh, services, "STRICT")
        backend, _ = await mesh.backend("backend-1", "backend", constant(b"backend"))
        other, _ = await mesh.backend("other-1", "other", constant(b"other"))
        web = await mesh.client("web-1", ["backend", "other"])
        assert isinstance(await plaintext_get(backend.inbound_ports[0]), str)  # STRICT: refused

        await mesh.apply(
            mesh_tls("backend-permissive", {"mode": "Permissive"}, {"kind": "Dataplane", "name": "backend-1"})
        )
        await eventually(lambda: inbound_status_is(backend, int), timeout=10)
        assert await plaintext_get(backend.inbound_ports[0]) == 200
        refused = await plaintext_get(other.inbound_ports[0])
        assert isinstance(refused, str), f"other's inbound answered plaintext with HTTP {refused}"
        # Mesh peers keep calling both over mTLS.
        assert (await web.get("backend", "/")).text == "backend"
        assert (await web.get("other", "/")).text == "other"

        # Back to the mesh's mode once the policy is gone.
        await mesh.delete("MeshTLS", "backend-permissive")
        await eventually(lambda: inbound_status_is(backend, str), timeout=10)


def test_strict_in_a_permissive_mesh_and_nothing_without_mtls() -> None:
    """The mode overrides the Mesh's either way; without mTLS MeshTLS does nothing (every inbound is
    plaintext: there is no mTLS chain to shape)."""
    proxy = Dataplane.model_validate(
        {
            "type": "Dataplane",
            "mesh": "default",
            "name": "web-1",
            "networking": {
                "address": "10.0.0.1",
                "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
            },
        }
    )
    strict = parse_resource(mesh_tls("strict", {"mode": "Strict", "tlsVersion": {"min": "TLS13"}}))
    policies = mesh_policies("default", [strict])

    def chains(mesh: Mesh | None) -> list[str]:
        resources = generate_snapshot(
            proxy, [proxy], mesh, context=ProxyContext(workdir="/w"), policies=policies
        )
        listener = resources[LISTENER_TYPE]["inbound:10.0.0.1:8080"]
        return ["mtls" if c.HasField("transport_socket") else "plaintext" for c in listener.filter_chains]

    permissive = Mesh.model_validate(
        {
            "type": "Mesh",
            "name": "default",
            "mtls": {
                "enabledBackend": "ca",
                "backends": [{"name": "ca", "type": "builtin", "mode": "PERMISSIVE"}],
            },
        }
    )
    assert chains(permissive) == ["mtls"]
    assert chains(None) == ["plaintext"]


def test_from_entries_and_rules_merge_smaller_name_wins_dataplane_beats_mesh() -> None:
    proxy = parse_resource(
        {
            "type": "Dataplane",
            "mesh": "default",
            "name": "web-1",
            "networking": {
                "address": "10.0.0.1",
                "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
            },
        }
    )
    docs = [
        mesh_tls("b-permissive", {"mode": "Permissive", "tlsVersion": {"min": "TLS12"}}),
        mesh_tls("a-strict", {"mode": "Strict"}),
        {
            "type": "MeshTLS",
            "mesh": "default",
            "name": "z-web",
            "spec": {
                "targetRef": {"kind": "Dataplane", "name": "web-1"},
                "from": [{"targetRef": {"kind": "Mesh"}, "default": {"mode": "Permissive"}}],
            },
        },
    ]
    policies = mesh_policies("default", [parse_resource(d) for d in docs])
    merged = policies.inbound_policy(MESH_TLS, proxy, proxy.networking.inbound[0]).catch_all
    assert merged is not None
    # Mesh-level first (b, then a: the smaller name wins), then the Dataplane one on top.
    assert [o.name for o in merged.origins] == ["b-permissive", "a-strict", "z-web"]
    assert merged.conf == {"mode": "Permissive", "tlsVersion": {"min": "TLS12"}}


INVALID = """\
type: MeshTLS
mesh: default
name: bad
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: web}
    default:
      mode: strict
      tlsVersion: {min: TLS14}
      tlsCiphers: [AES128-SHA]
      sni: backend
---
type: MeshTLS
mesh: default
name: bad-order
spec:
  targetRef: {kind: Mesh}
  rules:
  - default:
      tlsVersion: {min: TLS13, max: TLS12}
      tlsCiphers: [ECDHE-RSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256]
---
type: MeshTLS
mesh: default
name: bad-scope
spec:
  targetRef: {kind: Dataplane, name: web-1}
  rules:
  - default: {mode: Permissive, tlsCiphers: [ECDHE-RSA-AES128-GCM-SHA256]}
---
type: MeshTLS
mesh: default
name: bad-matches
spec:
  rules:
  - matches: [{spiffeID: {type: Exact, value: "spiffe://default/web"}}]
    default: {mode: Strict}
"""


@pytest.mark.parametrize(
    ("document", "causes"),
    [
        (
            0,
            [
                ("spec.targetRef.kind", "kind 'MeshService' is not supported as the top-level targetRef"),
                (
                    "spec.from[0].targetRef.kind",
                    "kind 'MeshService' is not supported in 'from'; supported kinds: Mesh",
                ),
                ("spec.from[0].default.mode", "unknown value 'strict'; expected 'Strict' or 'Permissive'"),
                ("spec.from[0].default.tlsVersion.min", "unknown value 'TLS14'"),
                ("spec.from[0].default.tlsCiphers[0]", "unknown value 'AES128-SHA'"),
                ("spec.from[0].default.sni", "unknown field"),
            ],
        ),
        (
            1,
            [
                ("spec.rules[0].default.tlsVersion.min", "TLS13 is above max TLS12"),
                ("spec.rules[0].default.tlsCiphers", "ECDHE-RSA-AES128-GCM-SHA256 listed more than once"),
            ],
        ),
        (
            2,
            [
                (
                    "spec.rules[0].default.tlsCiphers",
                    "can only be set by a policy whose top-level targetRef is kind Mesh",
                )
            ],
        ),
        (3, [("spec.rules[0].matches", "unknown field")]),
    ],
)
def test_kumactl_apply_names_every_invalid_field_and_stores_nothing(
    config_file: Path,  # noqa: F811 - the fixture
    document: int,
    causes: list[tuple[str, str]],
) -> None:
    assert_refused(config_file, INVALID.split("---\n")[document], causes, "meshtlses")


def test_kumactl_round_trips_a_valid_policy(config_file: Path) -> None:  # noqa: F811 - the fixture
    doc = yaml.safe_dump(
        mesh_tls("tls", {"mode": "Strict", "tlsVersion": {"min": "TLS12", "max": "TLSAuto"}})
    )
    assert kumactl(config_file, "apply", "-f", "-", stdin=doc).exit_code == 0
    shown = yaml.safe_load(
        kumactl(config_file, "get", "meshtls", "tls", "-m", "default", "-o", "yaml").output
    )
    assert shown["spec"]["rules"] == [
        {"default": {"mode": "Strict", "tlsVersion": {"min": "TLS12", "max": "TLSAuto"}}}
    ]
