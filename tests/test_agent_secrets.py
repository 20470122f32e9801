"""Where the agent's secrets may not go (issue 15, "Agent"): not into a child's environment, not
over plain HTTP; and `--dataplane-token` on the command line is warned about."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kuma_dp.constants import ENV_TOKEN
from kuma_dp.identity import keygen
from labkit.waiting import wait_until
from tests.support.agent_process import Agent, app, cp, pki, start_agent
from tests.support.fake_control_plane import FakeControlPlane

__all__ = ["app", "cp", "pki", "start_agent"]  # fixtures

StartAgent = Callable[..., Agent]
SECRET = "secret-token-value-for-the-environment-test"


def test_envoy_does_not_inherit_the_token(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    agent = start_agent(cp, "--name", "dp-1", env={ENV_TOKEN: SECRET})
    agent.wait_ready()
    assert cp.requests[-1]["dataplaneToken"] == SECRET  # the agent did read it
    (envoy,) = agent.envoy_pids()
    environ = Path(f"/proc/{envoy}/environ").read_bytes().split(b"\0")
    assert not [entry for entry in environ if entry.startswith(ENV_TOKEN.encode() + b"=")]
    assert SECRET.encode() not in b"\0".join(environ)
    assert SECRET not in agent.log()


_PRINT_ENV = (
    "import json, os, sys; sys.stdin.read(); "
    f"json.dump({{'key': '', 'csr': os.environ.get('{ENV_TOKEN}', 'absent')}}, sys.stdout)"
)


def test_the_key_child_does_not_inherit_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways the key child is started (early, before the loop; and from the loop)."""
    monkeypatch.setenv(ENV_TOKEN, SECRET)
    monkeypatch.setattr(keygen, "_CHILD_ARGV", (sys.executable, "-c", _PRINT_ENV))
    assert asyncio.run(keygen.generate([])).csr_pem == b"absent"
    with keygen.EarlyKeygen([]) as early:
        assert asyncio.run(early.result()).csr_pem == b"absent"


def test_plain_http_control_plane_is_refused(start_agent: StartAgent, tmp_path: Path) -> None:
    agent = start_agent(None, "--cp-address", "http://127.0.0.1:5678", "--name", "dp-1", env={ENV_TOKEN: "t"})
    assert agent.wait_exit() == 1
    log = agent.log()
    assert 'Error: --cp-address "http://127.0.0.1:5678": plain http:// is refused' in log
    assert "Traceback" not in log and "fetching bootstrap" not in log


def test_token_on_the_command_line_is_warned_about(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    agent = start_agent(cp, "--name", "dp-1", "--dataplane-token", SECRET)
    agent.wait_ready()
    assert cp.requests[-1]["dataplaneToken"] == SECRET  # still accepted (Kuma compatibility)
    wait_until(lambda: "--dataplane-token puts the token on the command line" in agent.log(), timeout=5)
    assert f"pass it in {ENV_TOKEN} or with --dataplane-token-file" in agent.log()
    assert SECRET not in agent.log()
