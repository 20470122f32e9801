"""Every mistake a user can make gets one clear message, a non-zero exit and no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from control_plane.dp_server.tls import self_signed_pem
from labkit.lab import BIN, ControlPlaneProc, Lab, dataplane
from labkit.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

GOOD = "type: Dataplane\nmesh: default\nname: dp-1\nnetworking:\n  address: 10.0.0.1\n  inbound:\n"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("type: Dataplane\nname: [unclosed\n", "line 2"),
        (
            GOOD + "  - port: 8080\n    tags: {kuma.io/service: a}\n  colour: blue\n",
            "networking.colour: unknown field",
        ),
        (GOOD + "  - port: 8080\n    tags: {kuma.io/protocol: http}\n", "kuma.io/service"),
        (GOOD + "  - port: 70000\n    tags: {kuma.io/service: a}\n", "networking.inbound[0].port"),
        (
            GOOD.replace("mesh: default", "mesh: nowhere") + "  - port: 1\n    tags: {kuma.io/service: a}\n",
            "nowhere",
        ),
    ],
    ids=["malformed-yaml", "unknown-field", "missing-service-tag", "port-out-of-range", "unknown-mesh"],
)
def test_kumactl_apply_rejects_bad_resources(
    lab: Lab, cp: ControlPlaneProc, document: str, expected: str
) -> None:
    res = lab.kumactl(cp, "apply", "-f", "-", input=document)
    assert res.returncode != 0
    assert expected in res.stderr + res.stdout
    assert "Traceback" not in res.stderr + res.stdout
    assert lab.kumactl(cp, "get", "dataplanes", "-o", "json").stdout.count('"name"') == 0


def _agent(
    lab: Lab, cp: ControlPlaneProc, cp_url: str, ca: Path, *extra: str, dp_text: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`kuma-dp run` for dp-1 with a valid token, against `cp_url` trusting `ca`."""
    dp_file = lab.root / "dp.yaml"
    dp_file.write_text(dp_text or yaml.safe_dump(dataplane("dp-1", "svc", free_port(), free_port())))
    argv = [
        str(BIN / "kuma-dp"), "run",
        "--cp-address", cp_url,
        "--ca-cert-file", str(ca),
        "-d", str(dp_file),
        "--dataplane-token-file", str(lab.dataplane_token(cp, "dp-1")),
    ]  # fmt: skip
    return subprocess.run(
        [*argv, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={**lab.env, **env},
        stdin=subprocess.DEVNULL,
    )


def _assert_clear_failure(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle in out, out


def test_agent_with_wrong_ca_file(lab: Lab, cp: ControlPlaneProc) -> None:
    other_ca = lab.root / "other-ca.crt"
    other_ca.write_bytes(self_signed_pem(["localhost"])[0])
    _assert_clear_failure(_agent(lab, cp, cp.dp_url, other_ca), str(other_ca))


def test_agent_with_missing_ca_file(lab: Lab, cp: ControlPlaneProc) -> None:
    _assert_clear_failure(_agent(lab, cp, cp.dp_url, lab.root / "nope.crt"), "nope.crt")


def test_agent_with_unreachable_control_plane(lab: Lab, cp: ControlPlaneProc) -> None:
    url = f"https://localhost:{free_port()}"
    res = _agent(
        lab,
        cp,
        url,
        cp.ca_cert,
        KUMA_CONTROL_PLANE_RETRY_BACKOFF="200ms",
        KUMA_CONTROL_PLANE_RETRY_MAX_DURATION="1s",
    )
    _assert_clear_failure(res, url)


def test_agent_with_missing_envoy_binary(lab: Lab, cp: ControlPlaneProc) -> None:
    _assert_clear_failure(
        _agent(lab, cp, cp.dp_url, cp.ca_cert, "--binary-path", "/nonexistent/envoy"), "/nonexistent/envoy"
    )


def test_agent_with_invalid_dataplane_gets_the_servers_message(lab: Lab, cp: ControlPlaneProc) -> None:
    bad = GOOD + "  - port: 8080\n    tags: {kuma.io/service: a}\n  colour: blue\n"
    _assert_clear_failure(_agent(lab, cp, cp.dp_url, cp.ca_cert, dp_text=bad), "colour")


def test_control_plane_with_bad_configuration(lab: Lab) -> None:
    res = subprocess.run(
        [str(BIN / "kuma-cp"), "run"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**lab.env, "KUMA_GENERAL_WORK_DIR": str(lab.root / "cp"), "KUMA_API_SERVER_HTTP_PORT": "fifty"},
    )
    _assert_clear_failure(res, "KUMA_API_SERVER_HTTP_PORT", "fifty")


@pytest.mark.parametrize(
    ("env", "config", "named"),
    [
        ({"KUMA_API_SERVER_AUTHN_TYPO": "tokens"}, None, "KUMA_API_SERVER_AUTHN_TYPO"),
        ({}, "apiServer:\n  authn:\n    typo: tokens\n", "apiServer.authn.typo"),
    ],
    ids=["variable", "config-key"],
)
def test_control_plane_refuses_an_unknown_setting(
    lab: Lab, env: dict[str, str], config: str | None, named: str
) -> None:
    """A misspelt security setting must stop the start, not be silently ignored."""
    argv = [str(BIN / "kuma-cp"), "run"]
    if config is not None:
        path = lab.root / "kuma-cp.yaml"
        path.write_text(config)
        argv += ["-c", str(path)]
    res = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        env={**lab.env, "KUMA_GENERAL_WORK_DIR": str(lab.root / "cp"), **env},
    )
    _assert_clear_failure(res, named, "no Kuma setting")
