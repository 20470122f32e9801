"""The CNI chain a container runtime runs for a pod, every part real: Debian's reference plugins
(`loopback`, then `bridge` + `host-local` IPAM) and `kuma-cni`, chained into the node's conflist by
`kuma-cni-install`, each exec'd with the spec's env and stdin. The plugins run inside a "node"
namespace of our own (so the bridge is made there, never on the host); the pods are namespaces
joined to it. Then kuma-cp runs on the node, an app and `kuma-dp` (UID 5678, real Envoy) in each
pod, and a plain curl from one pod's app user crosses both Envoys thanks to the rules kuma-cni put
there. Finally DEL undoes the chain. Root only (skipped otherwise, failing when CI=true).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import netns as pr_netns

from tests.netns_harness import NETNS_DIR, NetnsLab, require_root
from tests.test_e2e_transparent import APP_PORT, USER_UID, Host, TransparentMesh

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

BIN = Path(sys.executable).parent
REFERENCE_PLUGINS = Path("/usr/lib/cni")
EXCLUDED_PORT = 9091  # pod b's CNI_ARGS exclude it inbound
PLUGIN_ENV_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class Runtime:
    """What containerd/CRI-O do with CNI: per plugin, exec with CNI_* env and the config on stdin."""

    def __init__(self, lab: NetnsLab, node: str, root: Path, subnet: str) -> None:
        self.lab, self.node, self.root = lab, node, root
        self.bin_dir, self.conf_dir = root / "cni-bin", root / "net.d"
        self.cni_path = (self.bin_dir, REFERENCE_PLUGINS)
        self.bin_dir.mkdir()
        self.conf_dir.mkdir()
        self.bridge = f"kb{secrets.token_hex(3)}"  # unique, and it lives in the node namespace
        conflist = {
            "cniVersion": "1.0.0",
            "name": "podnet",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": f"{subnet}.0/24", "gateway": f"{subnet}.1"}]],
                        "dataDir": str(root / "ipam"),
                    },
                }
            ],
        }
        (self.conf_dir / "10-podnet.conflist").write_text(json.dumps(conflist, indent=2))
        self.loopback = {"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}
        self.log_file = root / "kuma-cni.log"

    def install_kuma_cni(self) -> None:
        res = self.lab.run(
            self.node,
            [str(BIN / "kuma-cni-install"), "--cni-bin-dir", str(self.bin_dir), "--cni-conf-dir",
             str(self.conf_dir), "--log-file", str(self.log_file)],
        )  # fmt: skip
        assert res.returncode == 0, res.stderr

    def network(self) -> dict[str, Any]:
        """The config the runtime reads: the first conflist in lexical order."""
        first = sorted(self.conf_dir.glob("*.conflist"))[0]
        return json.loads(first.read_text())

    def exec_plugin(self, conflist: dict[str, Any], plugin: dict[str, Any], command: str, pod: str, args: str,
                    prev: dict[str, Any] | None) -> tuple[int, Any]:  # fmt: skip
        stdin = {**plugin, "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
        if prev is not None:
            stdin["prevResult"] = prev
        path = next(
            d / plugin["type"] for d in (self.bin_dir, REFERENCE_PLUGINS) if (d / plugin["type"]).exists()
        )
        env = {
            "PATH": PLUGIN_ENV_PATH,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"ctr-{pod}",
            "CNI_NETNS": f"{NETNS_DIR}/{pod}",
            "CNI_IFNAME": "lo" if plugin["type"] == "loopback" else "eth0",
            "CNI_ARGS": args,
            "CNI_PATH": ":".join(map(str, self.cni_path)),
        }
        res = self.lab.run(self.node, [str(path)], env=env, input=json.dumps(stdin))
        return res.returncode, json.loads(res.stdout) if res.stdout.strip() else None

    def add(self, pod: str, args: str) -> dict[str, Any]:
        self._chain(self.loopback, "ADD", pod, args)
        return self._chain(self.network(), "ADD", pod, args)

    def check(self, pod: str, args: str, result: dict[str, Any]) -> None:
        self._chain(self.network(), "CHECK", pod, args, result)

    def delete(self, pod: str, args: str, result: dict[str, Any] | None) -> None:
        self._chain(self.network(), "DEL", pod, args, result, reverse=True)
        self._chain(self.loopback, "DEL", pod, args)

    def _chain(self, conflist: dict[str, Any], command: str, pod: str, args: str,
               cached: dict[str, Any] | None = None, reverse: bool = False) -> Any:  # fmt: skip
        plugins = conflist["plugins"][::-1] if reverse else conflist["plugins"]
        prev = cached
        for plugin in plugins:
            code, out = self.exec_plugin(conflist, plugin, command, pod, args, prev)
            assert code == 0, f"{plugin['type']} {command} failed: {out}"
            if command == "ADD":
                prev = out
        return prev


def bare_namespace(lab: NetnsLab) -> str:
    """A pod's namespace as a runtime makes it: nothing in it, not even lo up (loopback's job)."""
    name = f"{lab.prefix}p{secrets.token_hex(2)}"
    pr_netns.create(name)
    lab.namespaces.append(name)
    return name


class CniMesh(TransparentMesh):
    """The transparent mesh of test_e2e_transparent, on pods networked by the CNI chain:
    `a` is the node (control plane), the pods are hosts whose address the bridge plugin gave."""

    def __init__(self, lab: NetnsLab, root: Path, node: Host) -> None:
        self.lab, self.root, self.a = lab, root, node
        os.chmod(root, 0o755)


@pytest.fixture
def cluster() -> Iterator[tuple[Runtime, CniMesh]]:
    require_root()
    root = Path(tempfile.mkdtemp(prefix="kuma-cni-chain-"))
    lab = NetnsLab(prefix="cnic")
    try:
        subnet = f"10.253.{secrets.randbelow(250) + 1}"
        node = lab.namespace()
        runtime = Runtime(lab, node, root, subnet)
        yield runtime, CniMesh(lab, root, Host(node, f"{subnet}.1", root / "node-dp"))
    finally:
        lab.close()  # kills every process; removing the node namespace removes the bridge and veths
        if not os.environ.get("KUMA_TEST_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


def pod_address(result: dict[str, Any]) -> str:
    return result["ips"][0]["address"].split("/")[0]


def test_runtime_chain_then_mesh_traffic_through_envoy(cluster: tuple[Runtime, CniMesh]) -> None:
    runtime, mesh = cluster
    runtime.install_kuma_cni()
    assert [p["type"] for p in runtime.network()["plugins"]] == ["bridge", "kuma-cni"]

    pods: dict[str, tuple[Host, str, dict[str, Any]]] = {}
    k8s = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default"
    for name, args in (
        ("web", f"{k8s};K8S_POD_NAME=web-1"),
        ("backend", f"{k8s};K8S_POD_NAME=backend-1;traffic.kuma.io/exclude-inbound-ports={EXCLUDED_PORT}"),
    ):
        ns = bare_namespace(runtime.lab)
        result = runtime.add(ns, args)
        assert result["cniVersion"] == "1.0.0" and result["interfaces"][-1]["sandbox"].endswith(ns)
        host = Host(ns, pod_address(result), mesh.root / f"{name}-dp")
        pods[name] = (host, args, result)
        # The bridge plugin's interface and address, and kuma-cni's rules, all in the pod.
        addr = runtime.lab.run(ns, ["ip", "-o", "-4", "addr", "show"]).stdout
        assert f"eth0    inet {host.ip}/24" in addr and "lo    inet 127.0.0.1/8" in addr
        saved = runtime.lab.run(ns, ["iptables-save"]).stdout
        assert "-j KUMA_MESH_OUTBOUND" in saved and "--to-ports 15006" in saved
        runtime.check(ns, args, result)
    backend_rules = runtime.lab.run(pods["backend"][0].ns, ["iptables-save", "-t", "nat"]).stdout
    assert str(EXCLUDED_PORT) in backend_rules  # the pod's own CNI_ARGS
    assert str(EXCLUDED_PORT) not in runtime.lab.run(pods["web"][0].ns, ["iptables-save", "-t", "nat"]).stdout

    web, backend = pods["web"][0], pods["backend"][0]
    mesh.start_control_plane()
    mesh.start_app(web, APP_PORT)
    mesh.start_app(backend, APP_PORT, EXCLUDED_PORT)
    mesh.start_agent(web, "web-1", "web")
    mesh.start_agent(backend, "backend-1", "backend")

    before = web.stat("cluster.backend.upstream_rq_completed")
    res = mesh.curl(web, f"http://{backend.ip}:{APP_PORT}/", uid=USER_UID)
    assert res.returncode == 0, res.stderr
    assert f"peer=127.0.0.6 port={APP_PORT}" in res.stdout  # delivered by backend's Envoy
    assert web.stat("cluster.backend.upstream_rq_completed") == before + 1  # sent by web's Envoy
    res = mesh.curl(web, f"http://{backend.ip}:{EXCLUDED_PORT}/", uid=USER_UID)
    assert res.returncode == 0 and f"peer={web.ip} port={EXCLUDED_PORT}" in res.stdout  # inbound excluded

    # DEL in reverse order (kuma-cni, then bridge, then loopback), twice: rules, veth and lease gone.
    for host, args, result in pods.values():
        for _ in range(2):
            runtime.delete(host.ns, args, result)
        assert "KUMA_MESH" not in runtime.lab.run(host.ns, ["iptables-save"]).stdout
        assert "eth0" not in runtime.lab.run(host.ns, ["ip", "-o", "link"]).stdout
    leases = [p.name for p in (runtime.root / "ipam" / "podnet").iterdir() if p.name[0].isdigit()]
    assert leases == []
    log = runtime.log_file.read_text()
    assert log.count("rules installed") == 2 and log.count("rules removed") >= 2
