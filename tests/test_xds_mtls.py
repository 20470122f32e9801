"""mTLS in the generated config: golden files (STRICT, PERMISSIVE, with and without permissions),
what a proxy gets without mTLS or without a work dir, and real Envoy's validation of the config
with SDS files holding a real certificate.

Rewrite the golden files after an intended change with `UPDATE_GOLDEN=1 pytest tests/test_xds_mtls.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from control_plane.policies.core.rules import MeshPolicies
from control_plane.policies.loading import mesh_policies
from control_plane.resources.mesh import Mesh
from control_plane.resources.registry import parse_resource
from control_plane.xds.generate.snapshot import MissingWorkdir, ProxyContext, Resources, generate_snapshot
from control_plane.xds.names import CLUSTER_TYPE, LISTENER_TYPE
from tests.support.envoy_validate import assert_envoy_accepts
from tests.support.mesh_ca import MeshCa
from tests.support.xds_cases import CASES, MESH, to_json

GOLDEN = Path(__file__).parent / "golden" / "xds"
WORKDIR = "/var/run/kuma-dp/web-1"
CONTEXT = ProxyContext(workdir=WORKDIR)


def mesh(mode: str | None = None) -> Mesh:
    backend: dict[str, Any] = {"name": "ca-1", "type": "builtin"}
    if mode:
        backend["mode"] = mode
    return Mesh.model_validate({"name": "default", "mtls": {"enabledBackend": "ca-1", "backends": [backend]}})


def permission(name: str, target: dict[str, str], *rules: tuple[dict[str, str], str]) -> Any:
    spec = {"targetRef": target, "from": [{"targetRef": t, "default": {"action": a}} for t, a in rules]}
    return parse_resource({"type": "MeshTrafficPermission", "mesh": "default", "name": name, "spec": spec})


WEB, TCP = CASES["http_inbound_http_outbound"], CASES["tcp_inbound"]
MESH_KIND = {"kind": "Mesh"}
ONLY_BACKEND_DENIED = mesh_policies(
    "default",
    [
        permission(
            "web-and-redis",
            MESH_KIND,
            (MESH_KIND, "Allow"),
            ({"kind": "MeshService", "name": "backend"}, "Deny"),
            ({"kind": "MeshService", "name": "client"}, "AllowWithShadowDeny"),
        )
    ],
)
# name → (dataplane, mode, policies)
MTLS_CASES: dict[str, tuple[Any, str | None, MeshPolicies | None]] = {
    "mtls_strict_http": (WEB, None, None),
    "mtls_permissive_http": (WEB, "PERMISSIVE", None),
    "mtls_strict_http_permissions": (WEB, "STRICT", ONLY_BACKEND_DENIED),
    "mtls_permissive_tcp_permissions": (TCP, "PERMISSIVE", ONLY_BACKEND_DENIED),
}


def generate(case: str) -> Resources:
    dataplane, mode, policies = MTLS_CASES[case]
    return generate_snapshot(dataplane, [*MESH, dataplane], mesh(mode), context=CONTEXT, policies=policies)


@pytest.mark.parametrize("case", sorted(MTLS_CASES))
def test_mtls_config_matches_golden_file(case: str) -> None:
    got = json.dumps(to_json(generate(case)), indent=2, sort_keys=True)
    path = GOLDEN / f"{case}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(got + "\n")
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1 to create it"
    assert got + "\n" == path.read_text(), f"{case}: generated config differs from {path}"


def test_without_mtls_the_config_is_unchanged_by_context_and_policies() -> None:
    plain = generate_snapshot(WEB, MESH, None)
    mesh_without_mtls = Mesh.model_validate({"name": "default", "mtls": {"backends": [{"name": "ca-1"}]}})
    informed = generate_snapshot(WEB, MESH, mesh_without_mtls, context=CONTEXT, policies=ONLY_BACKEND_DENIED)
    assert to_json(informed) == to_json(plain)


def test_mtls_without_a_workdir_is_refused_with_the_reason() -> None:
    with pytest.raises(MissingWorkdir, match="sent no `workdir` in its node metadata"):
        generate_snapshot(WEB, MESH, mesh(), context=ProxyContext(workdir=None))


def test_strict_inbound_requires_a_mesh_certificate_and_forwards_the_identity() -> None:
    listener = generate("mtls_strict_http")[LISTENER_TYPE]["inbound:10.0.0.10:8080"]
    (chain,) = listener.filter_chains
    downstream = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(downstream)
    assert downstream.require_client_certificate.value
    validation = downstream.common_tls_context.combined_validation_context
    assert validation.default_validation_context.match_typed_subject_alt_names[0].matcher.prefix == (
        "spiffe://default/"
    )
    sds = validation.validation_context_sds_secret_config
    assert (sds.name, sds.sds_config.path_config_source.path) == (
        "mesh_ca",
        f"{WORKDIR}/identity/sds/ca.yaml",
    )
    assert sds.sds_config.path_config_source.watched_directory.path == f"{WORKDIR}/identity/sds"
    identity = downstream.common_tls_context.tls_certificate_sds_secret_configs[0]
    assert identity.name == "identity"
    assert identity.sds_config.path_config_source.path == f"{WORKDIR}/identity/sds/identity.yaml"
    manager = hcm.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(manager)
    assert manager.forward_client_cert_details == hcm.HttpConnectionManager.SANITIZE_SET
    assert manager.set_current_client_cert_details.uri
    # No MeshTrafficPermission: zero trust, an RBAC filter that allows nobody (Kuma's default).
    assert [f.name for f in manager.http_filters] == ["envoy.filters.http.rbac", "envoy.filters.http.router"]
    rbac = http_rbac_pb2.RBAC()
    manager.http_filters[0].typed_config.Unpack(rbac)
    assert rbac.rules.action == rbac_pb2.RBAC.ALLOW and not rbac.rules.policies


def test_outbound_cluster_verifies_the_exact_identity_of_the_service() -> None:
    cluster = generate("mtls_strict_http")[CLUSTER_TYPE]["backend"]
    upstream = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(upstream)
    assert upstream.sni == "backend{mesh=default}"  # Kuma's SNI between proxies
    assert list(upstream.common_tls_context.alpn_protocols) == ["kuma"]
    matcher = upstream.common_tls_context.combined_validation_context.default_validation_context
    assert matcher.match_typed_subject_alt_names[0].matcher.exact == "spiffe://default/backend"
    local = generate("mtls_strict_http")[CLUSTER_TYPE]["localhost:8080"]
    assert not local.HasField("transport_socket")  # the app behind the inbound is reached in plaintext


def test_permissive_inbound_has_a_tls_chain_for_mesh_peers_and_a_plaintext_chain() -> None:
    listener = generate("mtls_permissive_http")[LISTENER_TYPE]["inbound:10.0.0.10:8080"]
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    mtls, plain = listener.filter_chains
    assert mtls.filter_chain_match.transport_protocol == "tls"
    assert list(mtls.filter_chain_match.application_protocols) == ["kuma"]
    assert mtls.HasField("transport_socket")
    assert not plain.HasField("filter_chain_match") and not plain.HasField("transport_socket")


# --- real Envoy ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(MTLS_CASES))
def test_real_envoy_accepts_the_mtls_config(case: str, envoy_binary: Path, tmp_path: Path) -> None:
    MeshCa().write_sds_files(tmp_path, "web")
    dataplane, mode, policies = MTLS_CASES[case]
    resources = generate_snapshot(
        dataplane, [*MESH, dataplane], mesh(mode), context=ProxyContext(str(tmp_path)), policies=policies
    )
    assert_envoy_accepts(envoy_binary, resources, tmp_path / "bootstrap.json")
