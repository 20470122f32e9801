"""Shutdown with real Envoy: in-flight requests finish, new connections are refused, exit 0;
a second signal cuts the drain; --drain-time bounds it; SIGUSR2 drains inbound only."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from labkit.waiting import wait_until
from tests.support.agent_process import SLOW_SECONDS, Agent, app, cp, pki, start_agent
from tests.support.fake_control_plane import FakeControlPlane

__all__ = ["app", "cp", "pki", "start_agent"]  # fixtures

StartAgent = Callable[..., Agent]


class SlowRequest(threading.Thread):
    """GET /slow through Envoy's listener in the background."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/slow"
        self.result: str | BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = httpx.get(self.url, timeout=10).text
        except httpx.HTTPError as exc:
            self.result = exc


def active_connections(cp: FakeControlPlane) -> int:
    stats = httpx.get(
        f"http://127.0.0.1:{cp.admin_port}/stats?filter=downstream_cx_active&format=json"
    ).json()
    prefix = f"listener.127.0.0.1_{cp.listener_port}.downstream_cx_active"
    return sum(s["value"] for s in stats["stats"] if s["name"] == prefix)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def ready_agent(start_agent: StartAgent, cp: FakeControlPlane) -> Agent:
    agent = start_agent(cp, "--name", "dp-1")
    agent.wait_ready()
    return agent


def test_sigterm_lets_a_slow_request_finish_and_refuses_new_connections(
    ready_agent: Agent, cp: FakeControlPlane
) -> None:
    request = SlowRequest(cp.listener_port)
    wait_until(lambda: active_connections(cp) == 1, what="the slow request in Envoy")
    ready_agent.signal(signal.SIGTERM)
    signalled = time.monotonic()
    wait_until(lambda: ready_agent.readiness() == (503, "TERMINATING"), timeout=2, what="TERMINATING")
    wait_until(lambda: refused(cp.listener_port), timeout=2, what="new connections refused")
    assert request.is_alive()  # still being served
    assert ready_agent.wait_exit(10) == 0
    request.join(5)
    assert request.result == "hello from /slow\n"
    assert time.monotonic() - signalled < SLOW_SECONDS + 2  # left when the connection closed, not at 30s
    assert "waiting for 1 open connection(s) to finish" in ready_agent.log()


def test_second_signal_stops_at_once(ready_agent: Agent, cp: FakeControlPlane) -> None:
    request = SlowRequest(cp.listener_port)
    wait_until(lambda: active_connections(cp) == 1, what="the slow request in Envoy")
    ready_agent.signal(signal.SIGTERM)
    wait_until(
        lambda: "waiting for 1 open connection(s)" in ready_agent.log(), timeout=2, what="drain started"
    )
    second = time.monotonic()
    ready_agent.signal(signal.SIGINT)
    assert ready_agent.wait_exit(5) == 0
    assert time.monotonic() - second < 1.5
    request.join(5)
    assert isinstance(request.result, httpx.HTTPError)  # cut off with Envoy
    assert "received SIGINT again: stopping now" in ready_agent.log()


def test_drain_time_bounds_the_wait(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    agent = start_agent(cp, "--name", "dp-1", "--drain-time", "1s")
    agent.wait_ready()
    with socket.create_connection(("127.0.0.1", cp.listener_port)):  # idle, never closed by the client
        wait_until(lambda: active_connections(cp) == 1, what="the idle connection in Envoy")
        agent.signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert agent.wait_exit(10) == 0
    assert 0.9 < time.monotonic() - signalled < 4
    assert "drain time elapsed with 1 connection(s) still open" in agent.log()


def test_sigusr2_drains_inbound_and_keeps_running(ready_agent: Agent, cp: FakeControlPlane) -> None:
    ready_agent.signal(signal.SIGUSR2)
    wait_until(lambda: refused(cp.listener_port), timeout=3, what="inbound listener closed")
    assert "inbound listeners drained" in ready_agent.log()
    assert ready_agent.proc.poll() is None
    ready_agent.signal(signal.SIGTERM)
    assert ready_agent.wait_exit() == 0
