"""The admin API's users, end to end: a real kuma-cp (user tokens, Kuma's default) and the real kumactl.

Off loopback, anyone may read and nobody may change anything without an admin user token. The
admin token is created at first start as the global secret `admin-user-token`, which only an admin
(here: loopback) can read; `kumactl config control-planes add --auth-type=tokens --auth-conf
token=...` makes kumactl an admin from elsewhere, and `kumactl generate user-token` issues tokens
for other users, who are authenticated but not admins. A token that does not verify is a 401, even
for a read. No token appears in the control plane's log.

"Elsewhere" is this host's own non-loopback address when it has one (the peer is then not a
loopback address), and in any case a request through a reverse proxy on this host
(`X-Forwarded-For`), which Kuma's rules never treat as localhost either.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl

import httpx
import jwt
import pytest

from labkit.lab import ControlPlaneProc, Lab
from labkit.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MESH = "type: Mesh\nname: from-afar\n"
PROXIED = {"X-Forwarded-For": "203.0.113.7"}


def non_loopback_address() -> str | None:
    """An IPv4 address of this host other than loopback (no packet is sent: UDP connect only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing address
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.fixture
def cp(lab: Lab) -> ControlPlaneProc:
    cp = lab.start_control_plane(KUMA_API_SERVER_HTTP_INTERFACE="0.0.0.0")
    lab.wait_control_plane(cp)
    return cp


def admin_token(cp: ControlPlaneProc) -> str:
    secret = httpx.get(f"{cp.api_url}/global-secrets/admin-user-token", timeout=10)
    assert secret.status_code == 200, secret.text
    return base64.b64decode(secret.json()["data"]).decode()


def remote_clients(cp: ControlPlaneProc) -> list[tuple[str, dict[str, str]]]:
    """(base URL, headers) of callers that are not localhost."""
    port = cp.api_url.rsplit(":", 1)[1]
    clients = [(cp.api_url, PROXIED)]
    address = non_loopback_address()
    if address is not None:
        clients.append((f"http://{address}:{port}", {}))
    return clients


def test_off_loopback_reads_are_open_and_admin_operations_need_an_admin_token(cp: ControlPlaneProc) -> None:
    token = admin_token(cp)
    header, claims = jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})
    assert header["kid"] == "1" and header["alg"] == "RS256"
    assert claims["Name"] == "mesh-system:admin" and claims["Groups"] == ["mesh-system:admin"]
    assert claims["exp"] - claims["iat"] > 9 * 365 * 24 * 3600  # Kuma's 10 years
    for url, headers in remote_clients(cp):
        with httpx.Client(base_url=url, headers=headers, timeout=10) as anonymous:
            assert anonymous.get("/meshes/default").status_code == 200
            for response in (
                anonymous.put("/meshes/x", json={"type": "Mesh", "name": "x"}),
                anonymous.delete("/meshes/default"),
                anonymous.post("/tokens/dataplane", json={"name": "a", "mesh": "default"}),
                anonymous.post("/tokens/user", json={"name": "a", "validFor": "1h"}),
                anonymous.get("/global-secrets/admin-user-token"),
            ):
                assert response.status_code == 403, (url, response.text)
                assert "admin credentials are required" in response.json()["details"]
        bearer = {**headers, "Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=bearer, timeout=10) as admin:
            assert admin.put("/meshes/x", json={"type": "Mesh", "name": "x"}).status_code in (200, 201)
            assert admin.get("/global-secrets/admin-user-token").json()["data"]
            assert admin.delete("/meshes/x").status_code == 200


def test_kumactl_with_user_tokens_from_elsewhere(lab: Lab, cp: ControlPlaneProc) -> None:
    address = non_loopback_address()
    url = f"http://{address}:{cp.api_url.rsplit(':', 1)[1]}" if address else None
    token = admin_token(cp)
    if url is None:  # no other address here: the proxied path is covered by the test above
        url = cp.api_url
    config = str(lab.root / "kumactl-remote.yaml")

    def kumactl(*args: str, input: str | None = None) -> tuple[int, str]:
        import subprocess

        from labkit.lab import BIN

        env = {**lab.env, "KUMACTL_CONFIG": config}
        res = subprocess.run(
            [str(BIN / "kumactl"), *args], env=env, input=input, capture_output=True, text=True, timeout=30
        )
        return res.returncode, res.stdout + res.stderr

    rc, out = kumactl(
        "config", "control-planes", "add", "--name", "cp", "--address", url,
        "--auth-type=tokens", "--auth-conf", f"token={token}",
    )  # fmt: skip
    assert rc == 0, out
    rc, out = kumactl("apply", "-f", "-", input=MESH)
    assert rc == 0, out
    rc, alice = kumactl("generate", "user-token", "--name", "alice", "--group", "team-a", "--valid-for", "1h")
    assert rc == 0, alice
    alice = alice.strip()
    claims = jwt.decode(alice, options={"verify_signature": False})
    assert claims["Name"] == "alice" and claims["Groups"] == ["team-a"]
    assert 3590 <= claims["exp"] - claims["iat"] <= 3610

    as_alice = {"Authorization": f"Bearer {alice}", **PROXIED}
    assert httpx.get(f"{cp.api_url}/meshes/from-afar", headers=as_alice, timeout=10).status_code == 200
    refused = httpx.delete(f"{cp.api_url}/meshes/from-afar", headers=as_alice, timeout=10)
    assert refused.status_code == 403
    assert "user alice/team-a,mesh-system:authenticated is not an admin" in refused.json()["details"]

    tampered = alice[:-4] + ("AAAA" if not alice.endswith("AAAA") else "BBBB")
    for bad in (tampered, "not-a-token", "x" * 20_000):
        response = httpx.get(
            f"{cp.api_url}/meshes", headers={"Authorization": f"Bearer {bad}", **PROXIED}, timeout=10
        )
        assert response.status_code == 401, response.text
        assert response.json()["title"] == "Invalid authentication data"

    log = cp.proc.log.read_text()
    assert "user token rejected" in log
    for secret in (token, alice, token.rsplit(".", 1)[1], alice.rsplit(".", 1)[1]):
        assert secret not in log


def test_the_admin_token_is_made_once(lab: Lab, cp: ControlPlaneProc) -> None:
    first = admin_token(cp)
    cp.proc.stop()
    again = lab.start_control_plane(int(cp.api_url.rsplit(":", 1)[1]), free_port(), work_dir=cp.work_dir)
    lab.wait_control_plane(again)
    assert admin_token(again) == first
    with httpx.Client(
        base_url=again.api_url, headers={"Authorization": f"Bearer {first}", **PROXIED}
    ) as admin:
        assert admin.put("/meshes/still", json={"type": "Mesh", "name": "still"}).status_code == 201
    assert json.loads(httpx.get(f"{again.api_url}/meshes/still", timeout=10).text)["name"] == "still"


# --- the HTTPS API (5682) -------------------------------------------------------------------------


def test_the_api_over_https_with_the_control_planes_certificate(lab: Lab, cp: ControlPlaneProc) -> None:
    with httpx.Client(
        base_url=cp.https_api_url, verify=ssl.create_default_context(cafile=cp.ca_cert), timeout=10
    ) as https:
        assert https.get("/").json()["tagline"] == "Kuma"
        assert https.get("/global-secrets/admin-user-token").status_code == 200  # loopback: admin
    import subprocess

    from labkit.lab import BIN

    env = {**lab.env, "KUMACTL_CONFIG": str(lab.root / "kumactl-https.yaml")}

    def kumactl(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "kumactl"), *args]
        return subprocess.run(argv, env=env, input=input, capture_output=True, text=True, timeout=30)

    add = ["config", "control-planes", "add", "--name", "tls", "--address", cp.https_api_url]
    assert kumactl(*add, "--ca-cert-file", str(cp.ca_cert)).returncode == 0
    applied = kumactl("apply", "-f", "-", input="type: Mesh\nname: over-tls\n")
    assert applied.returncode == 0, applied.stderr
    untrusted = kumactl(*add, "--overwrite")  # the system's CAs do not know the CP's certificate
    assert untrusted.returncode == 0
    refused = kumactl("get", "meshes")
    assert refused.returncode != 0 and "certificate" in refused.stderr.lower(), refused.stderr


def test_https_with_its_own_pair_or_off(lab: Lab) -> None:
    from control_plane.dp_server.tls import self_signed_pem

    cert, key = lab.root / "api.crt", lab.root / "api.key"
    cert_pem, key_pem = self_signed_pem(["localhost"])
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    own = lab.start_control_plane(
        KUMA_API_SERVER_HTTPS_TLS_CERT_FILE=str(cert), KUMA_API_SERVER_HTTPS_TLS_KEY_FILE=str(key)
    )
    lab.wait_control_plane(own)
    with httpx.Client(
        verify=ssl.create_default_context(cafile=cert), timeout=10
    ) as https:  # trusted through that pair only
        assert https.get(own.https_api_url).status_code == 200
    port = free_port()
    off = lab.start_control_plane(KUMA_API_SERVER_HTTPS_ENABLED="false", KUMA_API_SERVER_HTTPS_PORT=str(port))
    lab.wait_control_plane(off)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://localhost:{port}/", verify=False, timeout=5)
