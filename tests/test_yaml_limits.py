"""YAML from outside is bounded (size, depth, aliases, alias expansion) at every entry point.

The "billion laughs" document below is ~360 bytes (the report's was 356); PyYAML loads it in
microseconds into a shared object graph that is 9**7 strings (~28 MB of JSON) once stored or
sent. Unit tests cover the loader; the end-to-end tests send it to a real kuma-cp (API PUT),
through the real kumactl, to the real kuma-dp and as kuma-cp's config file, and check that it is
refused quickly, naming the limit, with nothing stored.
"""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest
import yaml

from kuma_common import safe_yaml
from labkit.lab import BIN, ControlPlaneProc, Lab
from tests.support.yaml_bomb import BOMB


def test_the_bomb_is_small() -> None:
    assert len(BOMB) < 400
    assert len(yaml.safe_load(BOMB)["spec"]["x"]) == 9  # PyYAML alone loads it (shared, unexpanded)


def test_alias_expansion_is_refused_before_anything_is_built() -> None:
    started = time.monotonic()
    with pytest.raises(safe_yaml.YamlLimitError, match="max expanded nodes"):
        safe_yaml.safe_load(BOMB)
    assert time.monotonic() - started < 1.0  # linear in the text, never in the expansion


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("[" * 100_000, "max depth"),
        ("a: " + "{b: " * 70 + "1" + "}" * 70, "max depth"),
        ("a: &a 1\nb: [" + ",".join(["*a"] * 1001) + "]", "max aliases"),
        ("a: '" + "x" * (1024 * 1024) + "'", "max document size"),
        ("a: &a [*a]", "max expanded nodes"),  # a recursive alias never ends
    ],
    ids=["unclosed-brackets", "deep-mapping", "aliases", "size", "recursive"],
)
def test_each_limit_is_named(text: str, limit: str) -> None:
    with pytest.raises(safe_yaml.YamlLimitError, match=limit):
        safe_yaml.safe_load(text)


def test_ordinary_documents_and_a_few_aliases_still_load() -> None:
    text = "defaults: &d {timeout: 5s, retries: 3}\nfirst: *d\nsecond: *d\n"
    assert safe_yaml.safe_load(text)["second"] == {"timeout": "5s", "retries": 3}
    assert safe_yaml.safe_load_all("a: 1\n---\n---\nb: 2\n") == [{"a": 1}, {"b": 2}]
    assert safe_yaml.safe_load("") is None


# --- end to end ---------------------------------------------------------------------------------


def _nothing_stored(cp: ControlPlaneProc) -> None:
    res = httpx.get(f"{cp.api_url}/meshes/default/meshtrafficpermissions/lol", timeout=10)
    assert res.status_code == 404, res.text


@pytest.mark.e2e
@pytest.mark.parametrize("content_type", ["application/yaml", None])
def test_api_refuses_the_bomb(cp: ControlPlaneProc, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    started = time.monotonic()
    res = httpx.put(
        f"{cp.api_url}/meshes/default/meshtrafficpermissions/lol", content=BOMB, headers=headers, timeout=10
    )
    assert time.monotonic() - started < 2.0
    assert res.status_code == 400, res.text
    assert "max expanded nodes" in res.text
    _nothing_stored(cp)


@pytest.mark.e2e
def test_api_refuses_deep_json_and_large_bodies(cp: ControlPlaneProc) -> None:
    url = f"{cp.api_url}/meshes/default/meshtrafficpermissions/lol"
    deep = httpx.put(url, content="[" * 100_000, headers={"content-type": "application/json"}, timeout=10)
    assert deep.status_code == 400, deep.text
    assert "max depth" in deep.text
    large = httpx.put(url, content=b"a: " + b"x" * (2 * 1024 * 1024), timeout=10)
    assert large.status_code == 413, large.text
    assert "max body size" in large.text
    assert "Traceback" not in cp.proc.log_tail(200)
    _nothing_stored(cp)


@pytest.mark.e2e
def test_kumactl_apply_refuses_the_bomb(lab: Lab, cp: ControlPlaneProc) -> None:
    res = lab.kumactl(cp, "apply", "-f", "-", input=BOMB)
    assert res.returncode != 0
    assert "max expanded nodes" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    _nothing_stored(cp)


@pytest.mark.e2e
def test_agent_refuses_a_bomb_as_its_dataplane_file(lab: Lab) -> None:
    dp_file = lab.root / "dp.yaml"
    dp_file.write_text(BOMB.replace("MeshTrafficPermission", "Dataplane"))
    res = subprocess.run(
        [str(BIN / "kuma-dp"), "run", "--cp-address", "https://127.0.0.1:1", "-d", str(dp_file)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**lab.env, "KUMA_DATAPLANE_RUNTIME_TOKEN": "x"},
        stdin=subprocess.DEVNULL,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "max expanded nodes" in out, out
    assert "Traceback" not in out


@pytest.mark.e2e
def test_control_plane_refuses_a_bomb_as_its_config_file(lab: Lab) -> None:
    config = lab.root / "kuma-cp.yaml"
    config.write_text(BOMB.replace("type: MeshTrafficPermission\nmesh: default\nname: lol\n", ""))
    res = subprocess.run(
        [str(BIN / "kuma-cp"), "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**lab.env, "KUMA_GENERAL_WORK_DIR": str(lab.root / "cp")},
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "max expanded nodes" in out, out
    assert "Traceback" not in out


@pytest.mark.e2e
def test_api_refuses_a_bomb_inside_a_mesh_proxy_patch_value(cp: ControlPlaneProc) -> None:
    """MeshProxyPatch values are YAML inside the resource: parsed with the same limits."""
    laughs = BOMB.split("a: &a", 1)[1]
    value = "a: &a" + laughs.replace("spec: {targetRef: {kind: Mesh}, x: *g}\n", "name: x\nmetadata: *g\n")
    policy = {
        "type": "MeshProxyPatch",
        "mesh": "default",
        "name": "lol",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "default": {"appendModifications": [{"cluster": {"operation": "Add", "value": value}}]},
        },
    }
    started = time.monotonic()
    res = httpx.put(f"{cp.api_url}/meshes/default/meshproxypatches/lol", json=policy, timeout=10)
    assert time.monotonic() - started < 2.0
    assert res.status_code == 400, res.text
    assert "max expanded nodes" in res.text
    assert httpx.get(f"{cp.api_url}/meshes/default/meshproxypatches/lol", timeout=10).status_code == 404
