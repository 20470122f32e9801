"""kumactl against the real API served by uvicorn on an ephemeral port (HTTP only)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
import yaml
from click.testing import CliRunner, Result

from control_plane.api.app import create_app
from control_plane.kumactl.cli import main
from control_plane.resources.registry import TYPES
from control_plane.store.base import ResourceStore
from control_plane.store.defaults import ensure_default_mesh
from control_plane.store.memory import MemoryStore
from control_plane.store.sqlite import SqliteStore

DATAPLANE_YAML = """\
type: Dataplane
mesh: default
name: {name}
networking:
  address: 10.0.0.5
  inbound:
  - port: {port}
    tags:
      kuma.io/service: backend
"""


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


def test_apply_get_delete_round_trip(config_file: Path, tmp_path: Path) -> None:
    resources = tmp_path / "dp.yaml"
    resources.write_text(DATAPLANE_YAML.format(name="backend-1", port=11011))
    result = kumactl(config_file, "apply", "-f", str(resources))
    assert result.exit_code == 0, result.output
    assert result.output == 'created Dataplane "backend-1" in mesh "default"\n'
    assert kumactl(config_file, "apply", "-f", str(resources)).output.startswith("updated")

    table = kumactl(config_file, "get", "dataplanes").output.splitlines()
    assert table[0].split() == ["MESH", "NAME", "ADDRESS", "TAGS", "AGE"]
    assert table[1].split()[:4] == ["default", "backend-1", "10.0.0.5", "kuma.io/service=backend"]

    one = yaml.safe_load(kumactl(config_file, "get", "dataplane", "backend-1", "-o", "yaml").output)
    assert one["name"] == "backend-1" and one["networking"]["inbound"][0]["port"] == 11011

    listed = json.loads(kumactl(config_file, "get", "dataplanes", "-o", "json").output)
    assert set(listed) == {"items", "total", "next"} and listed["total"] == 1

    result = kumactl(config_file, "delete", "dataplane", "backend-1")
    assert result.exit_code == 0 and result.output == 'deleted Dataplane "backend-1"\n'
    assert json.loads(kumactl(config_file, "get", "dataplanes", "-o", "json").output)["total"] == 0


def test_apply_several_documents_from_stdin_with_vars(config_file: Path) -> None:
    dataplane = DATAPLANE_YAML.format(name="web", port=8080).replace("mesh: default", "mesh: {{mesh}}")
    text = "type: Mesh\nname: {{ mesh }}\n---\n" + dataplane
    # The Dataplane comes second in the file but needs its Mesh: meshes are applied first anyway.
    reordered = text.split("---\n")[1] + "---\n" + text.split("---\n")[0]
    result = kumactl(config_file, "apply", "-f", "-", "-v", "mesh=shop", stdin=reordered)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ['created Mesh "shop"', 'created Dataplane "web" in mesh "shop"']
    meshes = kumactl(config_file, "get", "meshes").output
    assert "shop" in meshes and "default" in meshes
    assert "web" in kumactl(config_file, "get", "dataplanes", "--mesh", "shop").output
    assert "web" in kumactl(config_file, "get", "dataplanes", "-A").output


def test_get_follows_pages_unless_one_page_is_asked(config_file: Path) -> None:
    text = "---\n".join(DATAPLANE_YAML.format(name=f"dp-{i}", port=1000 + i) for i in range(3))
    assert kumactl(config_file, "apply", "-f", "-", stdin=text).exit_code == 0
    page = json.loads(kumactl(config_file, "get", "dataplanes", "--size", "2", "-o", "json").output)
    assert [d["name"] for d in page["items"]] == ["dp-0", "dp-1"] and page["total"] == 3
    assert "offset=2" in page["next"]
    table = kumactl(config_file, "get", "dataplanes", "--size", "2", "--offset", "2").output.splitlines()
    assert [row.split()[1] for row in table[1:]] == ["dp-2"]
    everything = json.loads(kumactl(config_file, "get", "dataplanes", "-o", "json").output)
    assert len(everything["items"]) == 3 and everything["next"] is None


def test_dry_run_sends_nothing(config_file: Path, server: ApiServer) -> None:
    result = kumactl(
        config_file, "apply", "--dry-run", "-f", "-", stdin=DATAPLANE_YAML.format(name="x", port=1)
    )
    assert result.exit_code == 0
    assert result.output.startswith("# PUT /meshes/default/dataplanes/x\n")
    assert server.store.list("Dataplane")[1] == 0


def test_validation_error_names_every_field(config_file: Path) -> None:
    bad = DATAPLANE_YAML.format(name="backend-1", port=70000).replace("kuma.io/service: backend", "app: x")
    result = kumactl(config_file, "apply", "-f", "-", stdin=bad)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert lines[0].startswith('Error: Dataplane "backend-1" in mesh "default" (stdin:1): Could not process')
    assert any(line.startswith("* networking.inbound[0].port:") for line in lines)
    assert any(
        line.startswith("* networking.inbound[0].tags:") and "kuma.io/service" in line for line in lines
    )


def test_unknown_mesh_is_explained(config_file: Path) -> None:
    result = kumactl(
        config_file,
        "apply",
        "-f",
        "-",
        stdin=DATAPLANE_YAML.format(name="a", port=1).replace("mesh: default", "mesh: nope"),
    )
    assert result.exit_code == 1
    assert '* mesh: mesh "nope" does not exist; create it first (kumactl apply a Mesh)' in result.output


def test_get_absent_is_an_error(config_file: Path) -> None:
    result = kumactl(config_file, "get", "mesh", "nope")
    assert result.exit_code == 1
    assert result.output.startswith("Error: Could not retrieve a resource:")


def test_delete_mesh_cascades(config_file: Path) -> None:
    kumactl(config_file, "apply", "-f", "-", stdin="type: Mesh\nname: tmp\n")
    kumactl(
        config_file,
        "apply",
        "-f",
        "-",
        stdin=DATAPLANE_YAML.format(name="a", port=1).replace("default", "tmp"),
    )
    assert kumactl(config_file, "delete", "mesh", "tmp").exit_code == 0
    assert json.loads(kumactl(config_file, "get", "dataplanes", "-A", "-o", "json").output)["total"] == 0


def test_file_errors_name_the_file_and_line(config_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = kumactl(config_file, "apply", "-f", str(missing))
    assert (
        result.exit_code == 1
        and result.output == f"Error: cannot read {missing}: No such file or directory\n"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("type: Mesh\nname: a\n---\ntype: Mesh\n  name: [b\n")
    result = kumactl(config_file, "apply", "-f", str(broken))
    assert result.exit_code == 1
    assert str(broken) in result.output and "line 5" in result.output
    untyped = tmp_path / "untyped.yaml"
    untyped.write_text("type: Mesh\nname: a\n---\n\nname: b\n")
    result = kumactl(config_file, "apply", "-f", str(untyped))
    known = ", ".join(sorted(TYPES))
    assert result.output == f"Error: {untyped}:5: unknown type None; known types: {known}\n"
    assert known.startswith("Dataplane, Mesh, ") and "MeshTimeout" in known  # every policy is listed
    result = kumactl(config_file, "apply", "-f", "-", stdin="type: Mesh\nname: {{ who }}\n")
    assert result.exit_code == 1 and "-v who=VALUE" in result.output


def test_connection_refused_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = tmp_path / "config"
    assert (
        kumactl(config, "config", "control-planes", "add", "--name", "gone", "--address", url).exit_code == 0
    )
    result = kumactl(config, "get", "meshes")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: could not connect to the control plane at {url}: ")
    assert len(result.output.splitlines()) == 1


def test_control_planes_config(tmp_path: Path) -> None:
    config = tmp_path / "dir" / "config"
    listed = kumactl(config, "config", "control-planes", "list").output.splitlines()
    assert listed[1].split() == ["*", "local", "http://localhost:5681"]  # Kuma's default, no file needed
    result = kumactl(
        config, "config", "control-planes", "add", "--name", "a", "--address", "http://127.0.0.1:1"
    )
    assert result.output == 'added Control Plane "a"\nswitched active Control Plane to "a"\n'
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    saved = yaml.safe_load(config.read_text())
    assert saved["currentContext"] == "a"
    assert {"name": "a", "coordinates": {"apiServer": {"url": "http://127.0.0.1:1"}}} in saved[
        "controlPlanes"
    ]
    again = kumactl(
        config, "config", "control-planes", "add", "--name", "a", "--address", "http://127.0.0.1:2"
    )
    assert again.exit_code == 1 and "--overwrite" in again.output
    args = (
        "config",
        "control-planes",
        "add",
        "--name",
        "a",
        "--address",
        "http://127.0.0.1:2",
        "--overwrite",
    )
    assert kumactl(config, *args).exit_code == 0
    assert kumactl(config, "config", "control-planes", "switch", "--name", "local").exit_code == 0
    rows = [line.split() for line in kumactl(config, "config", "control-planes", "list").output.splitlines()]
    assert ["*", "local", "http://localhost:5681"] in rows and ["a", "http://127.0.0.1:2"] in rows
    bad = kumactl(config, "config", "control-planes", "switch", "--name", "zzz")
    assert bad.exit_code == 1 and '"zzz"' in bad.output
    bad = kumactl(config, "config", "control-planes", "add", "--name", "b", "--address", "localhost:5681")
    assert bad.exit_code == 1 and "--address" in bad.output


def test_config_file_flag_wins_over_env(tmp_path: Path, server: ApiServer) -> None:
    flagged = tmp_path / "flagged"
    kumactl(flagged, "config", "control-planes", "add", "--name", "t", "--address", server.url)
    env_config = tmp_path / "env-config"  # absent: would mean localhost:5681
    result = CliRunner().invoke(
        main, ["--config-file", str(flagged), "get", "meshes"], env={"KUMACTL_CONFIG": str(env_config)}
    )
    assert result.exit_code == 0, result.output
    assert "default" in result.output


def test_50_concurrent_applies_against_sqlite(tmp_path: Path) -> None:
    """50 kumactl applies at once (threads calling the CLI), then `get dataplanes -o json` shows 50."""
    with start(SqliteStore(tmp_path / "kuma.db")) as server:
        config = tmp_path / "config"
        kumactl(config, "config", "control-planes", "add", "--name", "t", "--address", server.url)
        files = []
        for i in range(50):
            path = tmp_path / f"dp-{i:02d}.yaml"
            path.write_text(DATAPLANE_YAML.format(name=f"dp-{i:02d}", port=10000 + i))
            files.append(path)
        errors: list[BaseException] = []
        barrier = threading.Barrier(50)

        def apply(path: Path) -> None:
            try:
                barrier.wait()
                main.main(["--config-file", str(config), "apply", "-f", str(path)], standalone_mode=False)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=apply, args=(f,)) for f in files]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        listed = json.loads(kumactl(config, "get", "dataplanes", "-o", "json").output)
        assert listed["total"] == 50
        assert [d["name"] for d in listed["items"]] == [f"dp-{i:02d}" for i in range(50)]
    server.store.close()


def test_real_entry_point_exit_code_and_no_traceback(tmp_path: Path) -> None:
    """The installed `kumactl` script: errors are one `Error:` line and exit code 1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = tmp_path / "config"
    kumactl(config, "config", "control-planes", "add", "--name", "gone", "--address", url)
    env = {**os.environ, "KUMACTL_CONFIG": str(config)}
    code = "from control_plane.kumactl.cli import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "get", "meshes"], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: could not connect to the control plane")
    assert "Traceback" not in proc.stderr
