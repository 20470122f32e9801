"""`kuma-dp run` against the harness CP (tests/support/fake_control_plane.py) with real Envoy:
bootstrap, READY, retries, fatal answers, bad input. The lead's e2e tests cover the real control plane."""

from __future__ import annotations

import json
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from labkit.ports import free_port
from labkit.waiting import wait_until
from tests.support.agent_process import Agent, app, cp, pki, start_agent
from tests.support.fake_control_plane import FakeControlPlane, make_pki

__all__ = ["app", "cp", "pki", "start_agent"]  # fixtures

StartAgent = Callable[..., Agent]
DATAPLANE = """\
type: Dataplane
mesh: default
name: {{ name }}
networking:
  address: 127.0.0.1
  inbound:
  - port: {{ port }}
    tags: {kuma.io/service: backend}
"""


def assert_user_error(agent: Agent, message: str, code: int = 1) -> str:
    assert agent.wait_exit() == code
    log = agent.log()
    assert message in log
    assert "Traceback" not in log
    return log


def test_bootstrap_then_ready_and_traffic(
    start_agent: StartAgent, cp: FakeControlPlane, pki: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    cp.admin_pipe = True  # admin over a Unix socket in the work dir
    dp_file = tmp_path / "dp.yaml"
    dp_file.write_text(DATAPLANE)
    work = tmp_path / "work"
    agent = start_agent(
        cp, "-d", str(dp_file), "-v", "name=backend-1", "-v", "port=1234", "--work-dir", str(work),
        env={"KUMA_DATAPLANE_RUNTIME_TOKEN": "tok-123"},
    )  # fmt: skip
    agent.wait_ready()
    assert httpx.get(f"http://127.0.0.1:{cp.listener_port}/hello", timeout=5).text == "hello from /hello\n"

    sent = cp.requests[-1]
    assert (sent["name"], sent["mesh"], sent["proxyType"], sent["dataplaneToken"]) == (
        "backend-1", "default", "dataplane", "tok-123")  # fmt: skip
    resource = json.loads(sent["dataplaneResource"])
    assert resource["name"] == "backend-1" and resource["networking"]["inbound"][0]["port"] == 1234
    assert sent["caCert"] == pki[0].read_text()
    assert sent["version"]["envoy"]["version"] == "1.40.0"
    assert "/1.40.0/" in sent["version"]["envoy"]["build"]
    assert (sent["workdir"], sent["readinessPort"]) == (str(work), agent.readiness_port)
    assert (sent["dynamicMetadata"], sent["features"]) == ({}, [])
    assert stat.S_IMODE((work / "bootstrap.yaml").stat().st_mode) == 0o600
    assert "tok-123" not in agent.log()

    time.sleep(1)  # idle
    rss_mib = psutil.Process(agent.proc.pid).memory_info().rss / 2**20
    print(f"agent idle RSS: {rss_mib:.1f} MiB")
    assert rss_mib <= 40

    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert work.is_dir()  # a given work dir is kept


def test_temp_work_dir_is_private_and_removed(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    agent = start_agent(cp, "--name", "dp-1")
    agent.wait_ready()
    work = Path(cp.requests[-1]["workdir"])
    assert stat.S_IMODE(work.stat().st_mode) == 0o711
    agent.signal(signal.SIGINT)
    assert agent.wait_exit() == 0
    assert not work.exists()


def test_5xx_and_empty_404_are_retried(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    cp.answers = [(503, b'{"title": "store busy"}'), (404, b""), (500, b"")]
    agent = start_agent(cp, "--name", "dp-1")
    agent.wait_ready()
    assert len(cp.requests) == 4
    log = agent.log()
    assert "HTTP 503: store busy" in log and "HTTP 404: Dataplane not yet known" in log
    assert log.count("; retrying in ") == 3  # jittered (kuma_dp.retry): 0-0.1 s, 0-0.2 s, 0-0.4 s


def test_422_is_fatal_with_the_server_message(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    body = {"title": "invalid Dataplane", "details": "invalid Dataplane",
            "causes": [{"field": "networking.address", "message": "must be an IP address"}]}  # fmt: skip
    cp.answers = [(422, json.dumps(body).encode())]
    agent = start_agent(cp, "--name", "dp-1")
    assert_user_error(
        agent,
        "Error: control plane refused the bootstrap request (HTTP 422): "
        "invalid Dataplane; networking.address: must be an IP address",
    )
    assert len(cp.requests) == 1


def test_wrong_ca_is_fatal_at_once(start_agent: StartAgent, cp: FakeControlPlane, tmp_path: Path) -> None:
    other_ca = make_pki(tmp_path, "other")[0]
    agent = start_agent(None, "--cp-address", cp.url, "--ca-cert-file", str(other_ca), "--name", "dp-1")
    log = assert_user_error(
        agent, f"Error: TLS verification of the control plane at {cp.url}/bootstrap failed"
    )
    assert f"--ca-cert-file {other_ca}" in log
    assert cp.requests == []


def test_unreachable_cp_gives_up_naming_the_address(start_agent: StartAgent, tmp_path: Path) -> None:
    address = f"https://localhost:{free_port()}"
    ca = make_pki(tmp_path, "x")[0]
    agent = start_agent(
        None, "--cp-address", address, "--ca-cert-file", str(ca), "--name", "dp-1",
        env={"KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "600ms"},
    )  # fmt: skip
    log = assert_user_error(agent, f"Error: could not get a bootstrap from the control plane at {address}")
    assert "ConnectError" in log


def test_missing_binary(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    agent = start_agent(cp, "--name", "dp-1", "--binary-path", "/no/envoy")
    assert_user_error(agent, "Error: Envoy binary not found at /no/envoy (from --binary-path")


def test_binary_not_executable(start_agent: StartAgent, cp: FakeControlPlane, tmp_path: Path) -> None:
    fake = tmp_path / "envoy"
    fake.write_text("#!/bin/sh\n")
    agent = start_agent(cp, "--name", "dp-1", env={"KUMA_DATAPLANE_RUNTIME_BINARY_PATH": str(fake)})
    assert_user_error(agent, f"Error: Envoy binary at {fake} is not an executable file")


def test_missing_ca_file(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    agent = start_agent(None, "--cp-address", cp.url, "--ca-cert-file", "/no/ca.pem", "--name", "dp-1")
    assert_user_error(agent, "Error: --ca-cert-file /no/ca.pem: cannot read the CA certificate: No such file")


def test_malformed_dataplane(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    agent = start_agent(cp, "--dataplane", "name: a\nnetworking: [")
    expected = "Error: --dataplane: invalid YAML at line 2, column 14: expected the node content"
    assert_user_error(agent, expected)


def test_unresolved_variable(start_agent: StartAgent, cp: FakeControlPlane, tmp_path: Path) -> None:
    dp_file = tmp_path / "dp.yaml"
    dp_file.write_text(DATAPLANE)
    agent = start_agent(cp, "-d", str(dp_file), "-v", "name=x")
    assert_user_error(agent, f"Error: --dataplane-file {dp_file} uses port but no value was given")


def test_usage_error_exit_2(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    agent = start_agent(cp, "--name", "dp-1", "--drain-time", "soon")
    assert_user_error(agent, "'soon' is not a duration", code=2)


def test_readiness_port_taken(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    agent = start_agent(cp, "--name", "dp-1")
    agent.wait_ready()
    second = start_agent(cp, "--name", "dp-2", env={"KUMA_READINESS_PORT": str(agent.readiness_port)})
    assert_user_error(second, f"Error: cannot listen for readiness on 127.0.0.1:{agent.readiness_port}")


def test_stop_while_retrying_bootstrap(start_agent: StartAgent, cp: FakeControlPlane) -> None:
    cp.answers = [(503, b"")] * 1000
    agent = start_agent(cp, "--name", "dp-1")
    wait_until(lambda: len(cp.requests) >= 2, what="a retry")
    assert agent.readiness() == (503, "NOT_READY")
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(5) == 0
