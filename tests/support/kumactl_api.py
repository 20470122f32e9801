"""The REST API served by uvicorn in a background thread on a free port (HTTP only), and kumactl
run in-process against it (click's CliRunner): `kumactl()`, the fixtures `server` and `config_file`,
and `assert_refused()` for what `kumactl apply` must refuse.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import uvicorn
import yaml
from click.testing import CliRunner, Result

from control_plane.api.app import create_app
from control_plane.kumactl.cli import main
from control_plane.store.base import ResourceStore
from control_plane.store.defaults import ensure_default_mesh
from control_plane.store.memory import MemoryStore


class ApiServer:
    """The REST API under uvicorn in a background thread, on 127.0.0.1 and a free port."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(store), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> ApiServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert self._thread.is_alive(), "the API server thread died"
            assert time.monotonic() < deadline, "the API server did not start within 10 s"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def start(store: ResourceStore) -> ApiServer:
    ensure_default_mesh(store)
    return ApiServer(store)


@pytest.fixture
def server() -> Iterator[ApiServer]:
    with start(MemoryStore()) as running:
        yield running


@pytest.fixture
def config_file(tmp_path: Path, server: ApiServer) -> Path:
    """A kumactl config pointing at the test server (added through kumactl itself)."""
    path = tmp_path / "kumactl" / "config"
    result = kumactl(path, "config", "control-planes", "add", "--name", "test", "--address", server.url)
    assert result.exit_code == 0, result.output
    return path


def kumactl(config: Path, *args: str, stdin: str | None = None) -> Result:
    runner = CliRunner()
    return runner.invoke(
        main, list(args), input=stdin, env={"KUMACTL_CONFIG": str(config)}, catch_exceptions=False
    )


def assert_refused(config: Path, document: str, causes: Iterable[tuple[str, str]], plural: str) -> Result:
    """`kumactl apply` of `document` fails naming each (field, message), without a traceback, and
    stores nothing of it (no resource of its names in `plural`)."""
    result = kumactl(config, "apply", "-f", "-", stdin=document)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    for field, message in causes:
        assert f"{field}: {message}" in result.output, result.output
    names = {doc["name"] for doc in yaml.safe_load_all(document) if doc}
    listed = json.loads(kumactl(config, "get", plural, "-A", "-o", "json").output)
    assert names.isdisjoint(item["name"] for item in listed["items"])
    return result
