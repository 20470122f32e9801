"""The dataplane token: `TokenSource` (file re-read on change), and the agent against THE HARNESS
(tests/support/fake_identity.py): a replaced token file reaches the next CSR and a fresh bootstrap, and an
Envoy whose ADS stream is refused with the old token is restarted with the new one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kuma_dp.errors import ConfigError
from kuma_dp.token_source import TokenSource
from labkit.waiting import wait_until
from tests.support.agent_process import Agent, TestApp, app, pki, start_agent
from tests.support.fake_identity import HarnessAds, IdentityControlPlane, tls_bootstrap_for

__all__ = ["app", "pki", "start_agent"]  # fixtures

StartAgent = Callable[..., Agent]
OLD, NEW = "old-token-1111", "new-token-2222"
DATAPLANE = """\
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 1234
    tags: {kuma.io/service: web}
"""


def replace_file(path: Path, text: str) -> None:
    """As a secret manager does: write beside, then rename over."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    path = secrets / "token"
    path.write_text(OLD + "\n")
    return path


# --- TokenSource ----------------------------------------------------------------------------------


def test_token_source_inline_file_and_reload(token_file: Path) -> None:
    assert TokenSource("inline", None).current() == "inline"
    assert TokenSource(None, None).current() == ""
    source = TokenSource(None, token_file)
    assert (source.current(), source.generation) == (OLD, 0)
    assert OLD not in repr(source)
    assert source.reload() is False
    replace_file(token_file, NEW)
    assert source.reload() is True and (source.current(), source.generation) == (NEW, 1)
    token_file.write_text("")  # mid-rewrite: keep the previous token
    assert source.reload() is False and source.current() == NEW
    token_file.unlink()
    assert source.reload() is False and source.current() == NEW
    with pytest.raises(ConfigError, match="--dataplane-token-file .*: cannot read"):
        TokenSource(None, token_file)


async def test_token_source_watch_sees_rename_and_symlink_swap(token_file: Path) -> None:
    source = TokenSource(None, token_file)
    changed = asyncio.Queue[str]()

    async def on_change() -> None:
        await changed.put(source.current())

    watcher = asyncio.create_task(source.watch(on_change))
    try:
        await asyncio.sleep(0.3)  # the watch is set up
        replace_file(token_file, NEW)
        assert await asyncio.wait_for(changed.get(), 5) == NEW
        # Kubernetes' layout: token -> ..data/token, ..data -> ..<version>; the swap renames ..data.
        directory = token_file.parent
        token_file.unlink()
        for version, token in (("..v1", "k8s-1"), ("..v2", "k8s-2")):
            (directory / version).mkdir()
            (directory / version / "token").write_text(token)
        (directory / "..data_tmp").symlink_to("..v1")
        os.replace(directory / "..data_tmp", directory / "..data")
        token_file.symlink_to("..data/token")
        assert await asyncio.wait_for(changed.get(), 5) == "k8s-1"
        (directory / "..data_tmp").symlink_to("..v2")
        os.replace(directory / "..data_tmp", directory / "..data")
        assert await asyncio.wait_for(changed.get(), 5) == "k8s-2"
        assert source.generation == 3
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


# --- the agent ------------------------------------------------------------------------------------


@pytest.fixture
def icp(pki: tuple[Path, Path, Path], app: TestApp) -> Iterator[IdentityControlPlane]:
    server = IdentityControlPlane(pki[1], pki[2], app.port)
    server.bootstrap_override = tls_bootstrap_for(server)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ads() -> Iterator[HarnessAds]:
    server = HarnessAds({OLD}).start()
    yield server
    server.stop()


def start(start_agent: StartAgent, cp: IdentityControlPlane, tmp_path: Path, token_file: Path) -> Agent:
    dp_file = tmp_path / "dp.yaml"
    dp_file.write_text(DATAPLANE)
    return start_agent(cp, "-d", str(dp_file), "--dataplane-token-file", str(token_file),
                       "--work-dir", str(tmp_path / "work"), "--drain-time", "1s")  # fmt: skip


def assert_no_token_in_log(agent: Agent) -> None:
    log = agent.log()
    assert OLD not in log and NEW not in log and "Traceback" not in log


def test_replaced_token_file_reaches_next_csr_and_bootstrap(
    start_agent: StartAgent, icp: IdentityControlPlane, tmp_path: Path, token_file: Path
) -> None:
    icp.lifetime_s = 4.0
    agent = start(start_agent, icp, tmp_path, token_file)
    agent.wait_ready()
    assert [r.authorization for r in icp.cert_requests] == [OLD]
    assert icp.requests[-1]["dataplaneToken"] == OLD
    [envoy_pid] = agent.envoy_pids()

    replace_file(token_file, NEW + "\n")
    wait_until(lambda: "dataplane token file changed" in agent.log(), timeout=5, what="the change logged")
    wait_until(lambda: icp.cert_requests[-1].authorization == NEW, timeout=6, what="a CSR with the new token")
    assert all(r.authorization == OLD for r in icp.cert_requests[:-1])
    wait_until(
        lambda: icp.requests[-1]["dataplaneToken"] == NEW, timeout=5, what="a bootstrap with the new token"
    )
    wait_until(
        lambda: "bootstrap refreshed with the new dataplane token" in agent.log(), what="the refresh logged"
    )
    assert agent.envoy_pids() == [envoy_pid]  # its ADS stream is fine (no ADS here): no restart
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert_no_token_in_log(agent)


def test_envoy_restarted_when_ads_refuses_the_old_token(
    start_agent: StartAgent,
    icp: IdentityControlPlane,
    ads: HarnessAds,
    tmp_path: Path,
    token_file: Path,
) -> None:
    icp.lifetime_s = 600.0
    icp.bootstrap_override = tls_bootstrap_for(icp, ads_port=ads.port)
    agent = start(start_agent, icp, tmp_path, token_file)
    agent.wait_ready()
    wait_until(lambda: ads.streams == [OLD], timeout=10, what="Envoy's ADS stream with the first token")
    [old_pid] = agent.envoy_pids()

    # The token is rotated and the old one revoked; the CP restarts, so Envoy must reconnect.
    replace_file(token_file, NEW)
    ads.allowed = {NEW}
    ads.restart()
    wait_until(lambda: ads.streams.count(OLD) >= 2, timeout=10, what="the old token refused on reconnect")
    wait_until(lambda: agent.envoy_pids() not in ([], [old_pid]), timeout=25, what="a new Envoy")
    wait_until(lambda: ads.streams[-1] == NEW, timeout=10, what="the ADS stream with the new token")
    assert NEW in (tmp_path / "work" / "bootstrap.yaml").read_text()  # what the new Envoy read
    assert "restarting Envoy with the new token" in agent.log()
    agent.wait_ready()
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert_no_token_in_log(agent)
