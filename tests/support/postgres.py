"""The private PostgreSQL server of the tests (labkit/postgres.py), skipped when PostgreSQL cannot
run here, but failed instead with CI=true (the project's rule)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit import postgres as _lab
from labkit.postgres import PASSWORD, USER, PostgresServer, free_port, migrated_database

__all__ = [
    "PASSWORD",
    "USER",
    "PostgresServer",
    "free_port",
    "migrated_database",
    "postgres_server",
    "require_postgres",
]


def require_postgres() -> Path:
    """The binaries' directory; skip (fail with CI=true) when PostgreSQL cannot run here."""
    try:
        return _lab.find_binaries()
    except _lab.PostgresUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (CI=true: not skipping)")
        pytest.skip(str(exc))


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    with _lab.postgres_server(require_postgres()) as server:
        yield server
