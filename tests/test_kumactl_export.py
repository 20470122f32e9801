"""`kumactl export` of one real kuma-cp and `kumactl apply -f` of its output into another: the
migration path of docs/migration.md (SQLite source; the target's store type is a parameter).

After the move the target has every resource with the same content, the mesh CA is byte-identical
(certificates issued before keep verifying), tokens issued by the source are accepted (and the ones
it revoked are refused), and secrets stay admin-only. Plus the pure part: order and Mesh shaping,
and what the Secret / GlobalSecret / DnsVips types refuse.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.ca.authority import new_ca_pem
from control_plane.kumactl import export_plan
from control_plane.resources.registry import READ_ONLY_FIELDS, TYPES, InvalidResource, parse_resource
from control_plane.tokens.keys import new_private_key, private_key_pem
from labkit.lab import BIN, ControlPlaneProc, Lab, wait_for


# The target's store: name → the kuma-cp environment selecting it.
def _postgres_target(lab: Lab, request: pytest.FixtureRequest) -> dict[str, str]:
    """A new database on the session's PostgreSQL, migrated with `kuma-cp migrate up`."""
    server = request.getfixturevalue("postgres")
    env = server.env(server.new_database())
    migrate = lab.spawn("migrate", [str(BIN / "kuma-cp"), "migrate", "up"], env, inherit_kuma=False)
    assert migrate.popen.wait(60) == 0, migrate.log_tail()
    return env


TARGET_STORES: dict[str, Callable[[Lab, pytest.FixtureRequest], dict[str, str]]] = {
    "sqlite": lambda lab, request: {"KUMA_STORE_TYPE": "sqlite"},
    "memory": lambda lab, request: {"KUMA_STORE_TYPE": "memory"},
    "postgres": _postgres_target,  # the migration path the docs describe: SQLite → PostgreSQL
}
PROXIED = {"X-Forwarded-For": "203.0.113.7"}  # not a direct loopback call: not admin

MESH = """\
type: Mesh
name: prod
mtls:
  enabledBackend: ca-1
  backends: [{name: ca-1, type: builtin}]
"""
WEB_1 = {
    "type": "Dataplane",
    "mesh": "prod",
    "name": "web-1",
    "networking": {
        "address": "127.0.0.1",
        "inbound": [{"port": 20001, "servicePort": 20002, "tags": {"kuma.io/service": "web"}}],
        "outbound": [{"port": 20003, "tags": {"kuma.io/service": "backend"}}],
    },
}
POLICIES = """\
type: MeshTrafficPermission
mesh: prod
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from: [{targetRef: {kind: Mesh}, default: {action: Allow}}]
---
type: MeshTimeout
mesh: prod
name: backend-timeouts
spec:
  targetRef: {kind: Mesh}
  to: [{targetRef: {kind: MeshService, name: backend}, default: {connectionTimeout: 2s}}]
---
type: MeshRetry
mesh: prod
name: retry-backend
spec:
  targetRef: {kind: Mesh}
  to: [{targetRef: {kind: Mesh}, default: {http: {numRetries: 3, retryOn: [5xx]}}}]
"""


def kumactl_ok(lab: Lab, cp: ControlPlaneProc, *args: str, input: str | None = None) -> str:
    result = lab.kumactl(cp, *args, input=input)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


def everything(cp: ControlPlaneProc) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Every resource of every type (as admin: loopback), without the server's timestamps."""
    found = {}
    with httpx.Client(base_url=cp.api_url, timeout=10) as api:
        for rtype in TYPES.values():
            body = api.get(f"/{rtype.plural}", params={"size": 1000}).json()
            assert body["next"] is None, rtype.name
            for doc in body["items"]:
                key = (doc["type"], doc.get("mesh", ""), doc["name"])
                found[key] = {k: v for k, v in doc.items() if k not in READ_ONLY_FIELDS}
    return found


def certificate(cp: ControlPlaneProc, token: str) -> httpx.Response:
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://prod/web")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).add_extension(san, False)
    pem = csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    return httpx.post(
        f"{cp.dp_url}/certificate",
        json={"mesh": "prod", "name": "web-1", "csr": pem},
        headers={"authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=str(cp.ca_cert)),
        timeout=10,
    )


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def mesh_ca_cert(cp: ControlPlaneProc) -> bytes:
    secret = httpx.get(f"{cp.api_url}/meshes/prod/secrets/mesh-ca", timeout=10)
    assert secret.status_code == 200, secret.text
    return base64.b64decode(secret.json()["cert"])


def prepare_source(lab: Lab, source: ControlPlaneProc) -> tuple[str, str]:
    """The mesh, its Dataplane and policies, one token that works and one revoked: (good, revoked)."""
    kumactl_ok(lab, source, "apply", "-f", "-", input=MESH)
    kumactl_ok(lab, source, "apply", "-f", "-", input=yaml.safe_dump(WEB_1) + "---\n" + POLICIES)
    # An initial policy deleted on the source must not come back on the target.
    kumactl_ok(lab, source, "delete", "meshcircuitbreaker", "-m", "prod", "mesh-circuit-breaker-all-prod")
    token_args = ("generate", "dataplane-token", "--name", "web-1", "--mesh", "prod", "--valid-for", "1h")
    good = kumactl_ok(lab, source, *token_args).strip()
    revoked = kumactl_ok(lab, source, *token_args).strip()
    revoked_file = lab.root / "revoked.token"
    revoked_file.write_text(revoked)
    kumactl_ok(lab, source, "revoke", "dataplane-token", "--token-file", str(revoked_file))
    wait_for(
        "the source to give service web a virtual IP",
        lambda: "web" in httpx.get(f"{source.api_url}/meshes/prod/vips", timeout=2).text,
        15,
        source.proc,
    )
    return good, revoked


@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("target_store", list(TARGET_STORES))
def test_export_then_apply_moves_every_resource_ca_and_tokens(
    lab: Lab, target_store: str, request: pytest.FixtureRequest
) -> None:
    source = lab.start_control_plane(work_dir=lab.root / "source", KUMA_STORE_TYPE="sqlite")
    target_env = TARGET_STORES[target_store](lab, request)
    target = lab.start_control_plane(work_dir=lab.root / "target", **target_env)
    lab.wait_control_plane(source)
    lab.wait_control_plane(target)
    good, revoked = prepare_source(lab, source)
    issued_before = certificate(source, good)  # also makes the mesh CA
    assert issued_before.status_code == 200, issued_before.text

    # An empty control plane exports too: its default Mesh, initial policies and global secrets.
    empty = documents(kumactl_ok(lab, target, "export"))
    assert empty[0] == {"type": "Mesh", "name": "default"}
    kinds = {"Mesh", "GlobalSecret", "DnsVips", *(t.name for t in export_plan.POLICIES)}
    assert {d["type"] for d in empty} <= kinds

    exported = kumactl_ok(lab, source, "export")
    assert exported.startswith("# Product: kuma-py, Version: ")
    types = [d["type"] for d in documents(exported)]
    assert types[:2] == ["Mesh", "Mesh"] and types.index("Secret") < types.index("Dataplane")
    assert types.index("DnsVips") < types.index("Dataplane") and types[-1] == "GlobalSecret"
    assert documents(exported)[-1]["name"] == "user-token-signing-key-1"  # last: see export_plan
    export_file = lab.root / "export.yaml"
    export_file.write_text(exported)
    applied = kumactl_ok(lab, target, "apply", "-f", str(export_file))
    assert 'created Mesh "prod"' in applied and 'created Dataplane "web-1" in mesh "prod"' in applied

    before = everything(source)

    def settled() -> bool:
        # The target's VIP allocator may pass between the table and the Dataplanes being applied:
        # it then marks `web` for release, and clears that at its next pass (the VIP stays).
        return everything(target).get(vips) == before[vips]

    vips = ("DnsVips", "prod", "kuma-prod-dns-vips")
    wait_for("the target's virtual-IP table to settle", settled, 15, target.proc)
    after = everything(target)
    mesh = after.pop(("Mesh", "", "prod"))
    assert mesh.pop("skipCreatingInitialPolicies") == ["MeshCircuitBreaker"]
    assert mesh == before.pop(("Mesh", "", "prod"))
    assert after == before  # every other resource, secrets and virtual IPs included
    assert ("MeshCircuitBreaker", "prod", "mesh-circuit-breaker-all-prod") not in after
    # docs/migration.md's check: the target's export is the source's, but for the header line.
    assert kumactl_ok(lab, target, "export").split("\n", 1)[1] == exported.split("\n", 1)[1]

    ca = mesh_ca_cert(target)
    assert ca == mesh_ca_cert(source)  # byte-identical: agents' certificates keep verifying
    ca_cert = x509.load_pem_x509_certificate(ca)
    x509.load_pem_x509_certificate(issued_before.json()["certificate"].encode()).verify_directly_issued_by(
        ca_cert
    )
    issued_after = certificate(target, good)  # the source's token, accepted by the target
    assert issued_after.status_code == 200, issued_after.text
    assert issued_after.json()["caBundle"].encode() == ca
    x509.load_pem_x509_certificate(issued_after.json()["certificate"].encode()).verify_directly_issued_by(
        ca_cert
    )
    refused = certificate(target, revoked)
    assert refused.status_code == 401 and refused.json()["details"] == "revoked"

    # Secrets stay admin-only; the source's admin user token is an admin on the target now.
    admin_token = base64.b64decode(
        httpx.get(f"{source.api_url}/global-secrets/admin-user-token", timeout=10).json()["data"]
    ).decode()
    with httpx.Client(base_url=target.api_url, headers=PROXIED, timeout=10) as anonymous:
        assert anonymous.get("/meshes/prod/dataplanes/web-1").status_code == 200  # reads are open
        for path in (
            "/secrets",
            "/meshes/prod/secrets",
            "/meshes/prod/secrets/mesh-ca",
            "/global-secrets",
            "/global-secrets/admin-user-token",
            "/dns-vips",
        ):
            response = anonymous.get(path)
            assert response.status_code == 403, (path, response.text)
            assert "admin credentials are required" in response.json()["details"]
        bearer = {"Authorization": f"Bearer {admin_token}"}
        assert anonymous.get("/meshes/prod/secrets/mesh-ca", headers=bearer).status_code == 200


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_export_profiles_formats_and_a_non_admin_caller(lab: Lab) -> None:
    source = lab.start_control_plane(work_dir=lab.root / "source", KUMA_API_SERVER_HTTP_INTERFACE="0.0.0.0")
    lab.wait_control_plane(source)
    kumactl_ok(lab, source, "apply", "-f", "-", input=MESH + "---\n" + yaml.safe_dump(WEB_1))
    everything_types = {d["type"] for d in documents(kumactl_ok(lab, source, "export"))}
    assert {"Mesh", "Dataplane", "MeshTimeout", "GlobalSecret"} <= everything_types
    no_dataplanes = documents(kumactl_ok(lab, source, "export", "--profile", "no-dataplanes"))
    assert "Dataplane" not in {d["type"] for d in no_dataplanes} and no_dataplanes
    no_secrets = documents(kumactl_ok(lab, source, "export", "--no-include-admin"))
    assert {d["type"] for d in no_secrets} == everything_types - {"GlobalSecret", "Secret", "DnsVips"}
    as_json = kumactl_ok(lab, source, "export", "-o", "json")
    assert json.loads(as_json.split("---\n")[1]) == {"type": "Mesh", "name": "default"}
    assert documents(as_json) == documents(kumactl_ok(lab, source, "export"))

    kubernetes = lab.kumactl(source, "export", "--format", "kubernetes")
    assert kubernetes.returncode == 1 and kubernetes.stdout == ""
    assert kubernetes.stderr.startswith("Error: --format kubernetes is not supported")
    bad_profile = lab.kumactl(source, "export", "--profile", "everything")
    assert bad_profile.returncode == 2 and "'everything' is not one of" in bad_profile.stderr

    # A caller who is not admin: the export stops at the secrets, saying why and what else to do.
    locked = lab.start_control_plane(
        work_dir=lab.root / "locked", KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN="false"
    )
    lab.wait_control_plane(locked)
    refused = lab.kumactl(locked, "export")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("Error: cannot export secrets: Access Denied: admin credentials")
    assert "--no-include-admin" in refused.stderr
    assert documents(kumactl_ok(lab, locked, "export", "--no-include-admin"))[0]["type"] == "Mesh"


# --- the pure part ----------------------------------------------------------------------------


def _doc(type_: str, name: str, mesh: str | None = None, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": type_, "name": name, "creationTime": "t", "modificationTime": "t"}
    if mesh:
        doc["mesh"] = mesh
    return {**doc, **spec}


def test_plan_orders_meshes_secrets_vips_then_the_rest_and_user_token_keys_last() -> None:
    listed = {
        "GlobalSecret": [
            _doc("GlobalSecret", "admin-user-token"),
            _doc("GlobalSecret", "user-token-signing-key-1"),
        ],
        "Dataplane": [_doc("Dataplane", "web-1", "m"), _doc("Dataplane", "orphan", "gone")],
        "Mesh": [_doc("Mesh", "m", skipCreatingInitialPolicies=["MeshRetry"])],
        "Secret": [_doc("Secret", "mesh-ca", "m")],
        "DnsVips": [_doc("DnsVips", "kuma-m-dns-vips", "m")],
        "MeshTimeout": [_doc("MeshTimeout", "mesh-timeout-all-m", "m")],
    }
    types = export_plan.export_types("all")
    out = export_plan.plan(listed, types, "all")
    assert [(d["type"], d["name"]) for d in out] == [
        ("Mesh", "m"),
        ("Secret", "mesh-ca"),
        ("DnsVips", "kuma-m-dns-vips"),
        ("Dataplane", "web-1"),  # not the one of a Mesh that is gone
        ("MeshTimeout", "mesh-timeout-all-m"),
        ("GlobalSecret", "admin-user-token"),
        ("GlobalSecret", "user-token-signing-key-1"),
    ]
    assert all("creationTime" not in d and "modificationTime" not in d for d in out)
    # MeshRetry was skipped already; MeshCircuitBreaker's initial policy is gone: keep it gone.
    assert out[0]["skipCreatingInitialPolicies"] == ["MeshRetry", "MeshCircuitBreaker"]
    federation = export_plan.plan(listed, export_plan.export_types("federation"), "federation")
    assert [d["type"] for d in federation] == ["Mesh", "Secret", "GlobalSecret", "GlobalSecret"]
    assert federation[0]["skipCreatingInitialPolicies"] == ["MeshRetry"]  # no policies exported: as is


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _refusal(doc: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(InvalidResource) as caught:
        parse_resource(doc)
    return caught.value.causes


def test_secret_types_accept_the_stored_shapes_and_name_the_field_they_refuse() -> None:
    cert, key = new_ca_pem("prod")
    other_cert, _ = new_ca_pem("prod")
    rsa_pem = private_key_pem(new_private_key())
    ok = [
        {"type": "Secret", "mesh": "prod", "name": "mesh-ca", "cert": _b64(cert), "key": _b64(key)},
        {"type": "Secret", "mesh": "prod", "name": "dataplane-token-signing-key-1", "data": _b64(rsa_pem)},
        {
            "type": "Secret",
            "mesh": "prod",
            "name": "dataplane-token-revocations-prod",
            "data": _b64(b"a,b-1"),
        },
        {"type": "Secret", "mesh": "prod", "name": "my-password", "data": _b64(b"hunter2")},
        {"type": "GlobalSecret", "name": "user-token-signing-key-2", "data": _b64(rsa_pem)},
        {"type": "GlobalSecret", "name": "admin-user-token", "data": _b64(b"a.b.c")},
        {
            "type": "DnsVips",
            "mesh": "prod",
            "name": "kuma-prod-dns-vips",
            "vips": {"web": {"ip": "240.0.0.1"}},
        },
    ]
    for doc in ok:
        parse_resource(doc)
    ca = {"type": "Secret", "mesh": "prod", "name": "mesh-ca"}
    refused = {
        "mismatched CA key": ({**ca, "cert": _b64(other_cert), "key": _b64(key)}, "key"),
        "CA with data": ({**ca, "data": _b64(b"x")}, "data"),
        "CA cert not base64": ({**ca, "cert": "%%%", "key": _b64(key)}, "cert"),
        "RSA key as CA key": ({**ca, "cert": _b64(cert), "key": _b64(rsa_pem)}, "key"),
        "cert on another secret": ({**ca, "name": "x", "data": _b64(b"x"), "cert": _b64(cert)}, "cert"),
        "no data": ({"type": "Secret", "mesh": "prod", "name": "x"}, "data"),
        "signing key not RSA": (
            {"type": "Secret", "mesh": "prod", "name": "dataplane-token-signing-key-1", "data": _b64(key)},
            "data",
        ),
        "signing key serial": (
            {"type": "GlobalSecret", "name": "user-token-signing-key-x", "data": _b64(rsa_pem)},
            "name",
        ),
        "unknown field": ({"type": "GlobalSecret", "name": "x", "data": _b64(b"x"), "value": "y"}, "value"),
        "revocations of another mesh": (
            {"type": "Secret", "mesh": "prod", "name": "dataplane-token-revocations-dev", "data": ""},
            "name",
        ),
        "VIP table misnamed": ({"type": "DnsVips", "mesh": "prod", "name": "vips"}, "name"),
        "VIP not IPv4": (
            {"type": "DnsVips", "mesh": "prod", "name": "kuma-prod-dns-vips", "vips": {"web": {"ip": "x"}}},
            "vips.web.ip",
        ),
    }
    for case, (doc, field) in refused.items():
        causes = _refusal(doc)
        assert [c["field"] for c in causes] == [field], (case, causes)
        assert "hunter2" not in json.dumps(causes) and "PRIVATE" not in json.dumps(causes), case


def _pem_like(label: str) -> st.SearchStrategy[str]:
    body = st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())
    return body.map(lambda b: _b64(f"-----BEGIN {label}-----\n{b}\n-----END {label}-----\n".encode()))


_SECRET_VALUE = st.one_of(
    st.text(max_size=40), _pem_like("CERTIFICATE"), _pem_like("PRIVATE KEY"), _pem_like("EC PRIVATE KEY")
)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["mesh-ca", "dataplane-token-signing-key-1", "dataplane-token-revocations-m", "x"]),
    cert=_SECRET_VALUE,
    key=_SECRET_VALUE,
)
def test_any_secret_value_is_either_accepted_or_refused_with_a_field(name: str, cert: str, key: str) -> None:
    fields = {"cert": cert, "key": key} if name == "mesh-ca" else {"data": cert}
    try:
        parse_resource({"type": "Secret", "mesh": "m", "name": name, **fields})
    except InvalidResource as exc:  # never anything else: that would be a 500
        assert all(c["field"] in ("cert", "key", "data") for c in exc.causes), exc.causes
