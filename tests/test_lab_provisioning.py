"""The lab's provisioning: the scripts pass shellcheck, the units they write pass
`systemd-analyze verify`, and the Vagrantfile passes `vagrant validate`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROVISION = ROOT / "vagrant" / "provision"
SCRIPTS = sorted(PROVISION.glob("*.sh"))
PREFIX = str(Path(sys.prefix))
UNITS = ("kuma-cp.service", "kuma-app.service", "kuma-dp.service")


def require_tool(name: str) -> str:
    """The tool's path; skip without it unless CI=true (setup.sh installs it)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (CI=true: not skipping; scripts/setup.sh installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def test_the_three_scripts_exist() -> None:
    assert [p.name for p in SCRIPTS] == ["common.sh", "control-plane.sh", "workload.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script: Path) -> None:
    shellcheck = require_tool("shellcheck")
    res = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def write_units(tmp_path: Path) -> Path:
    units, state = tmp_path / "units", tmp_path / "state"
    units.mkdir()
    common = [
        "--write-units",
        str(units),
        "--state-dir",
        str(state),
        "--prefix",
        PREFIX,
        "--project",
        str(ROOT),
    ]
    for argv in (
        [str(PROVISION / "control-plane.sh"), *common],
        [str(PROVISION / "workload.sh"), *common, "--cp-address", "10.213.0.10", "--name", "web",
         "--upstream", "http://10.213.0.21:8080"],
    ):  # fmt: skip
        res = subprocess.run(["bash", *argv], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
    return units


def test_generated_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    units = write_units(tmp_path)
    assert sorted(p.name for p in units.iterdir()) == sorted(UNITS)
    res = subprocess.run(
        [analyze, "verify", *(str(units / u) for u in UNITS)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    for unit in UNITS:
        assert unit not in res.stdout + res.stderr, res.stdout + res.stderr


def test_units_run_what_the_foreground_mode_runs(tmp_path: Path) -> None:
    """Real paths, the proxy as the kuma-dp user with only the rule install privileged, restarts."""
    units = write_units(tmp_path)
    dp = (units / "kuma-dp.service").read_text()
    assert "User=kuma-dp\n" in dp
    assert f"ExecStartPre=+{PREFIX}/bin/kumactl install transparent-proxy --kuma-dp-user 5678" in dp
    assert f"ExecStart={PREFIX}/bin/kuma-dp run --dataplane-file {tmp_path}/state/dp/dataplane.yaml" in dp
    env = (tmp_path / "state" / "env" / "kuma-dp.env").read_text()
    assert "KUMA_CONTROL_PLANE_URL=https://10.213.0.10:5678\n" in env
    cp = (units / "kuma-cp.service").read_text()
    assert f"ExecStart={PREFIX}/bin/kuma-cp run\n" in cp
    cp_env = (tmp_path / "state" / "env" / "kuma-cp.env").read_text()
    assert f"KUMA_GENERAL_TLS_CERT_FILE={tmp_path}/state/cp/tls.crt" in cp_env
    app = (units / "kuma-app.service").read_text()
    assert "DynamicUser=yes" in app and "--backend-url http://10.213.0.21:8080" in app
    for text in (dp, cp, app):
        assert "Restart=on-failure" in text and "NoNewPrivileges=yes" in text


def test_bad_options_name_the_flag(tmp_path: Path) -> None:
    res = subprocess.run(
        ["bash", str(PROVISION / "workload.sh"), "--address", "10.0.0.1", "--name", "b-1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode != 0 and "--cp-address is required" in res.stderr
    res = subprocess.run(
        ["bash", str(PROVISION / "control-plane.sh"), "--bogus"], capture_output=True, text=True
    )
    assert res.returncode != 0 and "unknown option: --bogus" in res.stderr


@pytest.mark.parametrize("backends", ["1", "3"])
def test_vagrant_validate(tmp_path: Path, backends: str) -> None:
    vagrant = require_tool("vagrant")
    # NFS (the default synced-folder type) is validated against the host's NFS server, which CI
    # does not have; the Vagrantfile is otherwise the same for both types.
    env = {
        **os.environ,
        "KUMA_LAB_BACKENDS": backends,
        "KUMA_LAB_SYNC_TYPE": "virtualbox",
        "VAGRANT_DOTFILE_PATH": str(tmp_path / ".vagrant"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }
    res = subprocess.run(
        [vagrant, "validate", "--ignore-provider"],
        cwd=ROOT / "vagrant",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Vagrantfile validated successfully" in res.stdout
    machines = [line for line in res.stdout.splitlines() if "Ignoring provider config" in line]
    assert len(machines) == 2 + int(backends)
