"""The CNI chain a container runtime runs for a pod, every part real: Debian's reference plugins
(`loopback`, then `bridge` + `host-local` IPAM) and `kuma-cni`, chained into the node's conflist by
`kuma-cni-install`, each exec'd with the spec's env and stdin. The plugins run inside a "node"
namespace of our own (so the bridge is made there, never on the host); the pods are namespaces
joined to it. Then kuma-cp runs on the node, an app and `kuma-dp` (UID 5678, real Envoy) in each
pod, and a plain curl from one pod's app user crosses both Envoys thanks to the rules kuma-cni put
there. Finally DEL undoes the chain. Root only (skipped otherwise, failing when CI=true).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cni_runtime import Runtime, bare_namespace
from tests.support.netns_lab import NetnsLab, require_root
from tests.support.transparent_mesh import APP_PORT, USER_UID, Host, TransparentMesh

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

EXCLUDED_PORT = 9091  # pod b's CNI_ARGS exclude it inbound


class CniMesh(TransparentMesh):
    """The transparent mesh of tests/support/transparent_mesh.py, on pods networked by the CNI chain:
    `a` is the node (control plane), the pods are hosts whose address the bridge plugin gave."""

    def __init__(self, lab: NetnsLab, root: Path, node: Host) -> None:
        self._settle(lab, root, None)
        self.a = node


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
