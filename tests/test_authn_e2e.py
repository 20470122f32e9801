"""Real kuma-cp with dpToken authentication, tokens from the real kumactl, a real Envoy.

An Envoy whose ADS metadata carries a bad token is refused before anything is registered: it gets
no listener or cluster and its Dataplane never appears. With a good token it does. Neither the
tokens nor any key shows up in the control plane's log.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509

from labkit.lab import ALLOW_ALL_PERMISSION, ControlPlaneProc, Lab, Proc, dataplane, wait_for
from labkit.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def kumactl_token(lab: Lab, cp: ControlPlaneProc, *args: str) -> str:
    result = lab.kumactl(cp, "generate", "dataplane-token", "--valid-for", "1h", *args)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2
    return token


def bootstrap_yaml(cp: ControlPlaneProc, dp: dict[str, Any], token: str, workdir: Path) -> httpx.Response:
    body = {
        "mesh": "default",
        "name": dp["name"],
        "proxyType": "dataplane",
        "dataplaneToken": token,
        "dataplaneResource": json.dumps(dp),
        "caCert": cp.ca_cert.read_text(),
        "workdir": str(workdir),
    }
    return httpx.post(
        f"{cp.dp_url}/bootstrap",
        json=body,
        verify=ssl.create_default_context(cafile=str(cp.ca_cert)),
        timeout=10,
    )


def start_envoy(lab: Lab, envoy: Path, name: str, config: str, workdir: Path) -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "bootstrap.yaml"
    path.write_text(config)
    path.chmod(0o600)
    argv = [str(envoy), "-c", str(path), "--disable-hot-restart", "--log-level", "info"]
    return lab.spawn(name, argv)


def config_dump(workdir: Path) -> dict[str, Any]:
    transport = httpx.HTTPTransport(uds=str(workdir / "envoy-admin.sock"))
    with httpx.Client(transport=transport, base_url="http://envoy", timeout=5) as admin:
        return admin.get("/config_dump").json()


def dynamic(dump: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    listeners: list[Any] = []
    clusters: list[Any] = []
    for config in dump["configs"]:
        listeners += config.get("dynamic_listeners", [])
        clusters += config.get("dynamic_active_clusters", []) + config.get("dynamic_warming_clusters", [])
    return listeners, clusters


def registered(cp: ControlPlaneProc, name: str) -> bool:
    return httpx.get(f"{cp.api_url}/meshes/default/dataplanes/{name}", timeout=2).status_code == 200


def test_only_a_good_token_gets_config_and_registers(lab: Lab, envoy_binary: Path) -> None:
    cp = lab.start_control_plane(KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE="dpToken")
    lab.wait_control_plane(cp)
    inbound = free_port()
    dp = dataplane("web-1", "web", inbound, free_port())
    good = kumactl_token(lab, cp, "--name", "web-1", "--tag", "kuma.io/service=web")
    for_web_2 = kumactl_token(lab, cp, "--name", "web-2")

    refused = bootstrap_yaml(cp, dp, for_web_2, lab.root / "unused")
    assert refused.status_code == 401 and refused.json()["details"] == "wrong dataplane"
    response = bootstrap_yaml(cp, dp, good, lab.root / "bad-envoy")
    assert response.status_code == 200, response.text
    config = base64.b64decode(response.json()["bootstrap"]).decode()
    ads_metadata = yaml.safe_load(config)["dynamic_resources"]["ads_config"]["grpc_services"][0]
    assert {"key": "authorization", "value": good} in ads_metadata["initial_metadata"]

    # An Envoy whose ADS stream carries the token of another dataplane.
    bad_dir = lab.root / "bad-envoy"
    bad = start_envoy(lab, envoy_binary, "envoy-bad", config.replace(good, for_web_2), bad_dir)
    refusal = re.compile(r"ADS stream of dataplane default/web-1 refused: wrong dataplane")
    wait_for(
        "the ADS refusal in the CP log", lambda: bool(refusal.search(cp.proc.log.read_text())), 20, cp.proc
    )
    wait_for("the bad Envoy's admin", lambda: bool(config_dump(bad_dir)), 10, bad)
    assert dynamic(config_dump(bad_dir)) == ([], [])
    assert not registered(cp, "web-1")
    bad.stop()

    good_dir = lab.root / "good-envoy"
    envoy = start_envoy(
        lab, envoy_binary, "envoy-good", config.replace(str(bad_dir), str(good_dir)), good_dir
    )

    def has_config() -> bool:
        listeners, clusters = dynamic(config_dump(good_dir))
        return any(f"inbound:127.0.0.1:{inbound}" in json.dumps(item) for item in listeners) and bool(
            clusters
        )

    wait_for("the good Envoy's listeners and clusters", has_config, 20, envoy)
    assert registered(cp, "web-1")

    # Revoked with the real kumactl (jti and mesh read from the token file): refused from now on.
    token_file = lab.root / "good.token"
    token_file.write_text(good)
    revoked = lab.kumactl(cp, "revoke", "dataplane-token", "--token-file", str(token_file))
    assert revoked.returncode == 0, revoked.stderr
    after = bootstrap_yaml(cp, dp, good, lab.root / "unused")
    assert after.status_code == 401 and after.json()["details"] == "revoked"

    envoy.stop()
    log = cp.proc.log.read_text()
    for secret in (good, for_web_2, good.rsplit(".", 1)[1], "PRIVATE KEY", "BEGIN"):
        assert secret not in log


def test_kumactl_warns_without_valid_for_and_needs_admin(lab: Lab) -> None:
    cp = lab.start_control_plane(KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE="dpToken")
    lab.wait_control_plane(cp)
    result = lab.kumactl(cp, "generate", "dataplane-token", "--name", "web-1")
    assert result.returncode == 0 and "Warning: no --valid-for given" in result.stderr
    assert result.stdout.strip().count(".") == 2
    unknown = lab.kumactl(cp, "generate", "dataplane-token", "--mesh", "nowhere", "--valid-for", "1h")
    assert unknown.returncode == 1 and 'mesh "nowhere" does not exist' in unknown.stderr
    assert "Traceback" not in unknown.stderr


MTLS_MESH = (
    """type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    dpCert: {rotation: {expiration: 1h}}
---"""
    + ALLOW_ALL_PERMISSION
)


def test_agents_with_tokens_get_their_identity_and_talk_over_mtls(lab: Lab) -> None:
    cp = lab.start_control_plane(KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE="dpToken")
    lab.wait_control_plane(cp)
    assert lab.kumactl(cp, "apply", "-f", "-", input=MTLS_MESH).returncode == 0
    backend_app, web_app, outbound = free_port(), free_port(), free_port()
    lab.start_app("backend", "backend-1", backend_app)
    lab.start_app("web", "web-1", web_app, backend_url=f"http://127.0.0.1:{outbound}")
    agents = {}
    for name, service, app, outbounds in (
        ("backend-1", "backend", backend_app, None),
        ("web-1", "web", web_app, {"backend": outbound}),
    ):
        token_file = lab.root / f"{name}.token"
        token_file.write_text(kumactl_token(lab, cp, "--name", name, "--tag", f"kuma.io/service={service}"))
        dp = dataplane(name, service, free_port(), app, outbounds)
        agents[name] = lab.start_agent(cp, dp, "--dataplane-token-file", str(token_file))
    for agent in agents.values():
        lab.wait_ready(agent, 40)

    # The certificate came from the CP before Envoy registered the Dataplane (known from /bootstrap).
    sds = yaml.safe_load((agents["web-1"].work_dir / "identity" / "sds" / "identity.yaml").read_text())
    chain = sds["resources"][0]["tls_certificate"]["certificate_chain"]["inline_string"]
    cert = x509.load_pem_x509_certificate(chain.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://default/web"]

    def through_the_mesh() -> bool:
        response = httpx.get(f"http://127.0.0.1:{web_app}/", timeout=3)
        return response.status_code == 200 and response.json()["backend"]["instance"] == "backend-1"

    wait_for("web → backend over mTLS", through_the_mesh, 20)

    intruder = lab.root / "intruder.token"
    intruder.write_text(kumactl_token(lab, cp, "--name", "web-2"))
    refused = lab.start_agent(
        cp, dataplane("web-9", "web", free_port(), free_port()), "--dataplane-token-file", str(intruder)
    )
    assert refused.proc.popen.wait(30) != 0
    assert "wrong dataplane" in refused.proc.log.read_text()
    assert not registered(cp, "web-9")


def test_signing_key_rotation_with_kumactl(lab: Lab, tmp_path: Path) -> None:
    cp = lab.start_control_plane(KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE="dpToken")
    lab.wait_control_plane(cp)
    dp = dataplane("web-1", "web", free_port(), free_port())
    old = kumactl_token(lab, cp, "--name", "web-1")
    rotated = lab.kumactl(cp, "rotate", "dataplane-token-signing-key", "--mesh", "default")
    assert rotated.returncode == 0, rotated.stderr
    assert "new dataplane token signing key 2" in rotated.stdout and ": 1" in rotated.stdout
    new = kumactl_token(lab, cp, "--name", "web-1")
    assert json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "=="))["kid"] == "2"
    # Both keys are trusted until the old one is removed; then only tokens of the new one are.
    assert bootstrap_yaml(cp, dp, old, tmp_path).status_code == 200
    removed = lab.kumactl(cp, "delete", "dataplane-token-signing-key", "--mesh", "default", "--kid", "1")
    assert removed.returncode == 0, removed.stderr
    refused = bootstrap_yaml(cp, dp, old, tmp_path)
    assert refused.status_code == 401 and "unknown key" in refused.text
    assert bootstrap_yaml(cp, dp, new, tmp_path).status_code == 200
    missing = lab.kumactl(cp, "delete", "dataplane-token-signing-key", "--mesh", "default", "--kid", "1")
    assert missing.returncode == 1 and "no signing key" in missing.stderr
