"""A running agent whose token is revoked, or whose token's signing key is removed, is cut off
(issue 15, "Identity"): the real kuma-cp ends its Envoy's ADS stream, and the agent exits 1 naming
the cause; the CP refuses that token any further certificate."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable

import httpx
import pytest

from labkit.lab import ControlPlaneProc, Lab, dataplane
from labkit.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

REVERIFY = "1s"  # the CP's check of open streams (10 s by default)
BOUND_S = 30.0  # the bound; normal here: ~1 s to close the stream + 5 s down + the probe


def _kumactl(lab: Lab, cp: ControlPlaneProc, *args: str) -> str:
    result = lab.kumactl(cp, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _revoke(lab: Lab, cp: ControlPlaneProc, token_file: str) -> None:
    _kumactl(lab, cp, "revoke", "dataplane-token", "--token-file", token_file)


def _remove_key(lab: Lab, cp: ControlPlaneProc, token_file: str) -> None:
    _kumactl(lab, cp, "rotate", "dataplane-token-signing-key", "--mesh", "default")
    _kumactl(lab, cp, "delete", "dataplane-token-signing-key", "--mesh", "default", "--kid", "1")


@pytest.mark.parametrize(("invalidate", "reason"), [(_revoke, "revoked"), (_remove_key, "unknown key")])
def test_agent_exits_when_its_token_is_no_longer_accepted(
    lab: Lab, invalidate: Callable[[Lab, ControlPlaneProc, str], None], reason: str
) -> None:
    cp = lab.start_control_plane(
        KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE="dpToken", KUMA_XDS_TOKEN_REVERIFY_INTERVAL=REVERIFY
    )
    lab.wait_control_plane(cp)
    token_file = lab.dataplane_token(cp, "web-1")
    agent = lab.start_agent(cp, dataplane("web-1", "web", free_port(), free_port()), token_file=token_file)
    lab.wait_ready(agent, 40)

    invalidate(lab, cp, str(token_file))
    started = time.monotonic()
    code = agent.proc.popen.wait(BOUND_S + 30)  # the bound is asserted below, with the log
    elapsed = time.monotonic() - started
    log = agent.proc.log.read_text(errors="replace")
    assert code == 1, log
    assert elapsed < BOUND_S, log
    assert (
        f"Error: the control plane no longer accepts the dataplane token (invalid dataplane token; {reason})"
        in log
    )
    assert "Traceback" not in log and token_file.read_text().strip() not in log
    # No new certificate for that token.
    refused = httpx.post(
        f"{cp.dp_url}/certificate",
        content=json.dumps({"mesh": "default", "name": "web-1", "csr": "unused"}),
        headers={"authorization": token_file.read_text().strip(), "content-type": "application/json"},
        verify=ssl.create_default_context(cafile=str(cp.ca_cert)),
        timeout=10,
    )
    assert refused.status_code == 401 and reason in refused.text
