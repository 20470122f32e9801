"""The work dir holds the token-bearing bootstrap and the private key (issue 15, "Agent"): an
unsafe existing `--work-dir` is refused, and a symlink planted where the agent writes is never
followed."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from kuma_dp.constants import ENV_TOKEN
from kuma_dp.workdir import unsafe_reason, write_private_file
from tests.support.agent_process import Agent, app, cp, pki, start_agent
from tests.support.fake_control_plane import FakeControlPlane

__all__ = ["app", "cp", "pki", "start_agent"]  # fixtures

StartAgent = Callable[..., Agent]
TOKEN = "work-dir-test-token"
OTHER_UID = 5678


def _stat(mode: int, uid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


def test_unsafe_reasons() -> None:
    assert unsafe_reason(_stat(stat.S_IFDIR | 0o700), 0) is None
    assert unsafe_reason(_stat(stat.S_IFDIR | 0o711), 0) is None
    assert unsafe_reason(_stat(stat.S_IFLNK | 0o777), 0) == "is a symbolic link"
    assert unsafe_reason(_stat(stat.S_IFREG | 0o600), 0) == "is not a directory"
    assert "owned by UID 5678" in str(unsafe_reason(_stat(stat.S_IFDIR | 0o700, 5678), 0))
    assert "mode 1777" in str(unsafe_reason(_stat(stat.S_IFDIR | 0o1777), 0))
    assert "mode 0770" in str(unsafe_reason(_stat(stat.S_IFDIR | 0o770), 0))


def test_a_planted_symlink_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    directory = tmp_path / "wd"
    directory.mkdir(mode=0o700)
    for planted in (".bootstrap.yaml.tmp", "bootstrap.yaml"):
        (directory / planted).symlink_to(victim)
    write_private_file(directory / "bootstrap.yaml", b"secret", 0o600)
    assert victim.read_bytes() == b""
    final = directory / "bootstrap.yaml"
    assert not final.is_symlink() and final.read_bytes() == b"secret"
    assert stat.S_IMODE(final.stat().st_mode) == 0o600


def test_agent_does_not_follow_planted_symlinks(
    start_agent: StartAgent, cp: FakeControlPlane, tmp_path: Path
) -> None:
    """A work dir prepared before the agent runs (e.g. by an image or another user's script) holds
    symlinks where the agent writes; the agent must replace them, never write through them."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"")
    work = tmp_path / "wd"
    work.mkdir(mode=0o700)
    for planted in (".bootstrap.yaml.tmp", "bootstrap.yaml"):
        (work / planted).symlink_to(victim)
    agent = start_agent(cp, "--name", "dp-1", "--work-dir", str(work), env={ENV_TOKEN: TOKEN})
    agent.wait_ready()
    assert victim.read_bytes() == b""
    bootstrap = work / "bootstrap.yaml"
    assert not bootstrap.is_symlink() and bootstrap.stat().st_size > 0


@pytest.mark.parametrize("problem", ["world-writable", "symlink", "other-owner"])
def test_unsafe_work_dir_is_refused(
    start_agent: StartAgent, cp: FakeControlPlane, tmp_path: Path, problem: str
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    work = real
    if problem == "world-writable":
        real.chmod(0o777)
        expected = "is writable by its group or by others (mode 0777)"
    elif problem == "symlink":
        work = tmp_path / "link"
        work.symlink_to(real)
        expected = "is a symbolic link"
    else:
        if os.geteuid() != 0:
            reason = "needs root to give the directory to another user"
            if os.environ.get("CI") == "true":
                pytest.fail(reason + " (CI=true: not skipping)")
            pytest.skip(reason)
        os.chown(real, OTHER_UID, OTHER_UID)
        expected = f"is owned by UID {OTHER_UID}"
    agent = start_agent(cp, "--name", "dp-1", "--work-dir", str(work), env={ENV_TOKEN: TOKEN})
    assert agent.wait_exit() == 1
    log = agent.log()
    assert f"Error: --work-dir {work} {expected}" in log
    assert "Traceback" not in log and not cp.requests
    assert not (real / "bootstrap.yaml").exists()
