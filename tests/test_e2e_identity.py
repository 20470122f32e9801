"""Identity end to end with the real control plane and agents: certificates rotate under load
without a failed request, a replaced token file is used for the next CSR and ADS connection, and
no token or key ever reaches a log."""

from __future__ import annotations

import base64
import json
import re
import stat
import time
from collections import Counter

import httpx
import pytest

from labkit.lab import ALLOW_ALL_PERMISSION, AgentProc, ControlPlaneProc, Lab, dataplane
from labkit.ports import free_port
from labkit.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROTATING_MESH = (
    """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    dpCert:
      rotation:
        expiration: 30s
---"""
    + ALLOW_ALL_PERMISSION
)


class MtlsPair:
    """web-1 → backend-1 over mTLS; requests enter at the web app, which calls its outbound."""

    def __init__(self, lab: Lab, cp: ControlPlaneProc) -> None:
        res = lab.kumactl(cp, "apply", "-f", "-", input=ROTATING_MESH)
        assert res.returncode == 0, res.stderr
        web_app, backend_app, web_out = free_port(), free_port(), free_port()
        lab.start_app("backend", "backend-1", backend_app)
        lab.start_app("web", "web-1", web_app, backend_url=f"http://127.0.0.1:{web_out}")
        self.backend = lab.start_agent(cp, dataplane("backend-1", "backend", free_port(), backend_app))
        self.web = lab.start_agent(
            cp, dataplane("web-1", "web", free_port(), web_app, outbounds={"backend": web_out})
        )
        lab.wait_ready(self.backend)
        lab.wait_ready(self.web)
        self.url = f"http://127.0.0.1:{web_app}"

    def caller_hash(self, client: httpx.Client) -> str:
        """The Hash= of the client certificate backend's Envoy saw (x-forwarded-client-cert)."""
        resp = client.get(self.url + "/rotate")
        resp.raise_for_status()
        xfcc = resp.json()["backend"]["caller"]
        assert "URI=spiffe://default/web" in xfcc
        return re.search(r"Hash=([0-9a-f]+)", xfcc).group(1)


def test_rotation_under_load_loses_no_request(lab: Lab, cp: ControlPlaneProc) -> None:
    pair = MtlsPair(lab, cp)
    envoy_pids = {a.name: _envoy_pid(a) for a in (pair.web, pair.backend)}
    seen: Counter[str] = Counter()
    failures: list[str] = []
    deadline = time.monotonic() + 120
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                seen[pair.caller_hash(client)] += 1
            except (httpx.HTTPError, KeyError, AttributeError) as exc:
                failures.append(repr(exc))
            time.sleep(0.02)
    assert failures == []
    assert len(seen) >= 3, f"only {len(seen)} client certificates seen: {seen}"
    assert sum(seen.values()) > 1000
    # Rotations never restarted Envoy.
    assert {a.name: _envoy_pid(a) for a in (pair.web, pair.backend)} == envoy_pids


def test_replaced_token_file_is_used_for_the_next_csr_and_ads_connection(
    lab: Lab, cp: ControlPlaneProc
) -> None:
    pair = MtlsPair(lab, cp)
    token_file = lab.root / "web-1.token"
    old_token = lab.root / "web-1.old-token"
    old_token.write_text(token_file.read_text())
    res = lab.kumactl(cp, "generate", "dataplane-token", "--name", "web-1", "--valid-for", "24h")
    staged = lab.root / ".web-1.token.new"
    staged.write_text(res.stdout.strip())
    staged.chmod(0o600)
    staged.replace(token_file)  # the way a secret volume swaps the file
    # Revoke the old token: from now on only the new one opens an ADS stream or gets a certificate.
    revoked = lab.kumactl(cp, "revoke", "dataplane-token", "--token-file", str(old_token))
    assert revoked.returncode == 0, revoked.stderr
    # Force a reconnect: the control plane restarts; web's Envoy must come back with the new token.
    api_port = int(cp.api_url.rsplit(":", 1)[1])
    cp.proc.stop()
    again = lab.start_control_plane(api_port, cp.dp_port, work_dir=cp.work_dir)
    lab.wait_control_plane(again)
    with httpx.Client(timeout=5) as client:
        first = pair.caller_hash(client)
        # A renewal (30 s certificates) with the new token: a new client certificate is seen.
        wait_until(lambda: pair.caller_hash(client) != first, timeout=45, interval=0.5)
    wait_until(lambda: "web-1" in lab.kumactl(again, "get", "dataplanes").stdout, timeout=30)
    log = pair.web.proc.log.read_text()
    assert "dataplane token file changed" in log


def test_secrets_are_private_and_never_logged(lab: Lab, cp: ControlPlaneProc) -> None:
    pair = MtlsPair(lab, cp)
    with httpx.Client(timeout=5) as client:
        pair.caller_hash(client)
    secrets = []
    for agent in (pair.web, pair.backend):
        token = (lab.root / f"{agent.name}.token").read_text().strip()
        key = (agent.work_dir / "identity" / "key.pem").read_text()
        secrets += [token, token.split(".")[2], _pem_body(key)]
        for path in (agent.work_dir / "identity").rglob("*"):
            if path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE((agent.work_dir / "bootstrap.yaml").stat().st_mode) == 0o600
    ca = json.loads(lab.kumactl(cp, "get", "meshes", "-o", "json").stdout)  # the API never serves keys
    assert "PRIVATE KEY" not in json.dumps(ca)
    assert stat.S_IMODE((cp.work_dir / "kuma.db").stat().st_mode) == 0o600
    logs = "".join(p.read_text(errors="replace") for p in lab.root.glob("*.log"))
    assert "Envoy started" in logs  # the logs are there and hold the agents' lines
    for secret in secrets:
        assert secret not in logs


def _pem_body(pem: str) -> str:
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    body = "".join(lines)
    base64.b64decode(body)  # it is a key
    return lines[1] if len(lines) > 1 else body


def _envoy_pid(agent: AgentProc) -> int:
    import psutil

    children = psutil.Process(agent.proc.popen.pid).children(recursive=True)
    return next(c.pid for c in children if "envoy" in c.name())
