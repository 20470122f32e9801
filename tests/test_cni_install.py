"""kuma-cni-install on real directories (no root needed): chains once, twice is a no-op,
--uninstall restores the original bytes, an unparsable config is refused before any change."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kuma_cni import install

BIN = Path(sys.executable).parent
# As a node with the bridge plugin has it (odd spacing on purpose: restored byte for byte).
BRIDGE_CONFLIST = b"""{
  "cniVersion": "1.0.0",
  "name":   "podnet",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.253.7.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"""


def run_installer(bin_dir: Path, conf_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "kuma-cni-install"), "--cni-bin-dir", str(bin_dir), "--cni-conf-dir", str(conf_dir)]
    return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=30)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    return bin_dir, conf_dir


def test_chain_once_twice_is_a_no_op_uninstall_restores_bytes(dirs: tuple[Path, Path]) -> None:
    bin_dir, conf_dir = dirs
    (conf_dir / "10-podnet.conflist").write_bytes(BRIDGE_CONFLIST)
    (conf_dir / "20-other.conflist").write_bytes(b'{"plugins": []}')  # not the first: never touched
    before = snapshot(conf_dir)

    res = run_installer(bin_dir, conf_dir)
    assert res.returncode == 0, res.stderr
    assert "chained into" in res.stdout and "10-podnet.conflist" in res.stdout
    chained = json.loads((conf_dir / "10-podnet.conflist").read_text())
    assert [p["type"] for p in chained["plugins"]] == ["bridge", "portmap", "kuma-cni"]
    assert chained["plugins"][-1]["exclude_namespaces"] == ["kube-system"]
    assert (conf_dir / "20-other.conflist").read_bytes() == before["20-other.conflist"]

    after_first = snapshot(conf_dir), snapshot(bin_dir)
    res = run_installer(bin_dir, conf_dir)
    assert res.returncode == 0 and "already chained" in res.stdout
    assert (snapshot(conf_dir), snapshot(bin_dir)) == after_first

    launcher = bin_dir / "kuma-cni"
    version = subprocess.run([str(launcher)], env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True)
    assert json.loads(version.stdout)["supportedVersions"][-1] == "1.0.0"

    res = run_installer(bin_dir, conf_dir, "--uninstall")
    assert res.returncode == 0, res.stderr
    assert snapshot(conf_dir) == before  # byte for byte, no backup left behind
    assert snapshot(bin_dir) == {}


def test_single_plugin_conf_becomes_a_conflist_and_comes_back(dirs: tuple[Path, Path]) -> None:
    bin_dir, conf_dir = dirs
    single = b'{"cniVersion": "0.4.0", "name": "podnet", "type": "bridge", "bridge": "cni0"}'
    (conf_dir / "10-podnet.conf").write_bytes(single)
    assert run_installer(bin_dir, conf_dir).returncode == 0
    assert not (conf_dir / "10-podnet.conf").exists()  # the runtime would read it before the conflist
    made = json.loads((conf_dir / "10-podnet.conflist").read_text())
    assert made["cniVersion"] == "0.4.0" and made["name"] == "podnet"
    assert [p["type"] for p in made["plugins"]] == ["bridge", "kuma-cni"]
    assert run_installer(bin_dir, conf_dir, "--uninstall").returncode == 0
    assert snapshot(conf_dir) == {"10-podnet.conf": single}


def test_unparsable_config_is_refused_naming_the_file(dirs: tuple[Path, Path]) -> None:
    bin_dir, conf_dir = dirs
    (conf_dir / "05-broken.conflist").write_bytes(b'{"plugins": [')
    (conf_dir / "10-podnet.conflist").write_bytes(BRIDGE_CONFLIST)
    before = snapshot(conf_dir)
    res = run_installer(bin_dir, conf_dir)
    assert res.returncode != 0
    assert "05-broken.conflist" in res.stderr and "not valid JSON" in res.stderr
    assert "Traceback" not in res.stderr
    assert snapshot(conf_dir) == before and snapshot(bin_dir) == {}
    (conf_dir / "05-broken.conflist").write_bytes(b'{"name": "x"}')
    res = run_installer(bin_dir, conf_dir)
    assert res.returncode != 0 and '"plugins"' in res.stderr


def test_empty_conf_dir_and_missing_dirs(dirs: tuple[Path, Path]) -> None:
    bin_dir, conf_dir = dirs
    res = run_installer(bin_dir, conf_dir)
    assert res.returncode != 0 and "no CNI network configuration" in res.stderr
    res = run_installer(bin_dir / "nope", conf_dir)
    assert res.returncode != 0 and "--cni-bin-dir" in res.stderr


def test_uninstall_keeps_a_change_made_after_install(dirs: tuple[Path, Path]) -> None:
    bin_dir, conf_dir = dirs
    target = conf_dir / "10-podnet.conflist"
    target.write_bytes(BRIDGE_CONFLIST)
    assert run_installer(bin_dir, conf_dir, "--exclude-namespace", "infra").returncode == 0
    document = json.loads(target.read_text())
    document["plugins"].insert(1, {"type": "tuning"})  # the network operator updated the file
    target.write_text(json.dumps(document))
    assert run_installer(bin_dir, conf_dir, "--uninstall").returncode == 0
    types = [p["type"] for p in json.loads(target.read_text())["plugins"]]
    assert types == ["bridge", "tuning", "portmap"]


def test_chaining_is_pure_and_replaces_our_entry() -> None:
    conflist = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}
    entry = install.plugin_entry("/tmp/x.log", ["a"])
    once = install.chained(conflist, entry)
    assert install.chained(once, entry) == once
    changed = install.chained(once, install.plugin_entry(None, ["b"]))
    assert changed["plugins"] == [{"type": "bridge"}, {"type": "kuma-cni", "exclude_namespaces": ["b"]}]
    assert install.unchained(once) == conflist
