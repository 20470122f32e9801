"""Envoy supervision with real Envoy: restart after SIGKILL, give up on a crash loop, die with the agent."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from labkit.waiting import wait_until
from tests.support.agent_process import Agent, app, cp, pki, start_agent
from tests.support.fake_control_plane import FakeControlPlane, static_bootstrap

__all__ = ["app", "cp", "pki", "start_agent"]  # fixtures

StartAgent = Callable[..., Agent]


@pytest.mark.parametrize("admin_pipe", [False, True], ids=["admin-port", "admin-socket"])
def test_killed_envoy_is_restarted_and_ready_again(
    start_agent: StartAgent, cp: FakeControlPlane, admin_pipe: bool
) -> None:
    cp.admin_pipe = admin_pipe  # a killed Envoy leaves its socket file behind
    agent = start_agent(cp, "--name", "dp-1")
    agent.wait_ready()
    (first,) = agent.envoy_pids()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: agent.envoy_pids() not in ([], [first]), what="a new Envoy")
    agent.wait_ready()
    assert httpx.get(f"http://127.0.0.1:{cp.listener_port}/again", timeout=5).text == "hello from /again\n"
    assert "Envoy exited unexpectedly (signal SIGKILL); restarting in 0.2s" in agent.log()
    assert len(cp.requests) == 1  # same bootstrap, no new request
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0


def test_crash_loop_gives_up(start_agent: StartAgent, cp: FakeControlPlane, tmp_path: Path) -> None:
    fake = tmp_path / "envoy"
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = --version ]; then echo "envoy  version: abc/1.40.0/Clean/RELEASE/BoringSSL"; '
        'exit 0; fi\necho "boom" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    agent = start_agent(cp, "--name", "dp-1", "--binary-path", str(fake), "--max-envoy-restarts", "2")
    assert agent.wait_exit() == 1
    log = agent.log()
    assert "Error: Envoy crashed 3 times in 60s; giving up (last exit: exit code 1)" in log
    assert log.count("[envoy] boom") == 3
    assert "restarting in 0.2s" in log and "restarting in 0.4s" in log
    assert "Traceback" not in log


def test_real_envoy_that_cannot_start(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    """A listener on a port already taken: Envoy 1.40 exits at once, so the agent gives up."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cp.bootstrap_override = lambda body: static_bootstrap(port, cp.app_port, cp.admin_port)
        agent = start_agent(cp, "--name", "dp-1", "--max-envoy-restarts", "1", "--envoy-restart-window", "1m")
        assert agent.wait_exit(20) == 1
    log = agent.log()
    assert "Error: Envoy crashed 2 times in 60s; giving up (last exit: exit code 1)" in log
    assert "Address already in use" in log  # Envoy's own reason, forwarded with [envoy]


def test_envoy_dies_with_the_agent(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    agent = start_agent(cp, "--name", "dp-1")
    agent.wait_ready()
    (envoy_pid,) = agent.envoy_pids()
    envoy = psutil.Process(envoy_pid)
    assert os.getpgid(envoy_pid) == envoy_pid  # its own process group
    agent.proc.kill()
    agent.proc.wait(5)
    wait_until(
        lambda: not envoy.is_running() or envoy.status() == psutil.STATUS_ZOMBIE, timeout=5, what="Envoy gone"
    )


def test_bootstrap_is_json_of_the_same_request_each_restart(
    start_agent: StartAgent, cp: FakeControlPlane
) -> None:
    """Restarts reuse the written bootstrap: the CP is asked once even after two crashes."""
    agent = start_agent(cp, "--name", "dp-1")
    for _ in range(2):
        agent.wait_ready()
        (pid,) = agent.envoy_pids()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda pid=pid: agent.envoy_pids() not in ([], [pid]), what="a new Envoy")
    agent.wait_ready()
    assert "restarting in 0.2s" in agent.log() and "restarting in 0.4s" in agent.log()
    assert len(cp.requests) == 1
