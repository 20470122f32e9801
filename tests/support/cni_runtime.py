"""What a container runtime (containerd, CRI-O) does with CNI, for the kuma-cni chain test and
benchmark: `Runtime` execs each plugin of the node's conflist with the spec's CNI_* env and config on
stdin, inside a "node" network namespace; `bare_namespace` makes a pod's namespace as a runtime does.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from labkit.lab import BIN
from tests.support.netns_lab import NETNS_DIR, NetnsLab, ip

REFERENCE_PLUGINS = Path("/usr/lib/cni")
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
    ip("netns", "add", name)
    lab.namespaces.append(name)
    return name
