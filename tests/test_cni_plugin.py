"""kuma-cni as a runtime runs it: the installed `kuma-cni` executable, env + stdin per the CNI spec,
in throwaway network namespaces (root; skipped otherwise, failing when CI=true). The pure parts
(spec parsing, result conversion, per-pod settings) are tested without root."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kuma_cni import settings, spec
from kuma_cni.spec import CniError

from tests.support.netns_lab import NETNS_DIR, NetnsLab, require_root

BIN = Path(sys.executable).parent
PLUGIN = str(BIN / "kuma-cni")
PREV_1_0 = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/x"}],
    "ips": [{"address": "10.253.1.5/24", "gateway": "10.253.1.1", "interface": 0}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}


# --- pure ---------------------------------------------------------------------------------------------


def test_cni_args_parse_and_reject_a_pair_without_equals() -> None:
    args = spec.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=web;kuma.io/sidecar-uid=5678;")
    assert args == {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "web", "kuma.io/sidecar-uid": "5678"}
    with pytest.raises(CniError) as err:
        spec.parse_cni_args("IgnoreUnknown=1;oops")
    assert err.value.code == spec.INVALID_ENVIRONMENT and '"oops"' in err.value.msg


def test_results_convert_between_versions() -> None:
    old = spec.convert_result(PREV_1_0, "0.4.0")
    assert old["cniVersion"] == "0.4.0" and old["ips"][0]["version"] == "4"
    assert spec.convert_result({"ips": [{"address": "fd00::5/64"}]}, "0.3.1")["ips"][0]["version"] == "6"
    back = spec.convert_result(old, "1.0.0")
    assert back == PREV_1_0  # 0.4.0 and 1.0.0 differ only by ips[].version
    assert spec.convert_result(PREV_1_0, "1.0.0") == PREV_1_0


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"{not json", spec.DECODING_FAILURE, "not JSON"),
        (b"[1]", spec.DECODING_FAILURE, "not a JSON object"),
        (b'{"cniVersion": "9.9.9", "name": "n", "type": "kuma-cni"}', spec.INCOMPATIBLE_VERSION, "9.9.9"),
        (b'{"cniVersion": "1.0.0", "type": "kuma-cni"}', spec.INVALID_CONFIG, '"name"'),
    ],
)
def test_bad_configs_get_the_spec_codes(data: bytes, code: int, words: str) -> None:
    with pytest.raises(CniError) as err:
        spec.parse_config(data)
    assert err.value.code == code and words in err.value.msg


def test_pod_settings_override_node_settings_and_name_their_source() -> None:
    conf = {"transparent_proxy": {"redirect": {"inbound": {"port": 15010}}, "kumaDPUser": "5678"}}
    args = {"traffic.kuma.io/exclude-inbound-ports": "9091", "K8S_POD_NAME": "web-1"}
    runtime = {
        "io.kubernetes.cri.pod-annotations": {"kuma.io/transparent-proxying-inbound-port": "15011"},
        "kuma.io/transparent-proxying-outbound-port": "15002",
    }
    overrides = settings.pod_overrides(args, runtime)
    config = settings.tproxy_config(conf, overrides)
    assert (config.inbound_port, config.outbound_port, config.proxy_uid) == (15011, 15002, 5678)
    assert config.exclude_inbound_ports == ((9091, 9091),)
    bad = settings.pod_overrides({"kuma.io/transparent-proxying-inbound-port": "70000"}, None)
    with pytest.raises(CniError) as err:
        settings.tproxy_config(conf, bad)
    assert err.value.code == spec.INVALID_CONFIG
    assert "CNI_ARGS kuma.io/transparent-proxying-inbound-port" in err.value.msg and "70000" in err.value.msg
    with pytest.raises(CniError, match="unknown key"):
        settings.tproxy_config({"transparent_proxy": {"redirect": {"inbound": {"prot": 1}}}}, {})


def test_the_builtin_dns_annotation_captures_every_query_of_the_pod() -> None:
    """As Kuma's CNI: a pod's resolv.conf is not the node's, so `kuma.io/builtin-dns` means captureAll."""
    node = {"transparent_proxy": {"redirect": {"dns": {"enabled": True, "resolvConfigPath": "/r.conf"}}}}
    assert settings.tproxy_config(node, {}).dns_capture_all is False
    args = {"kuma.io/builtin-dns": "enabled", "kuma.io/builtin-dns-port": "16053"}
    config = settings.tproxy_config(node, settings.pod_overrides(args, None))
    assert (config.redirect_dns, config.dns_capture_all, config.dns_port) == (True, True, 16053)
    off = settings.tproxy_config(node, settings.pod_overrides({"kuma.io/builtin-dns": "disabled"}, None))
    assert (off.redirect_dns, off.dns_capture_all) == (False, False)


def test_pods_outside_the_mesh() -> None:
    conf = {"exclude_namespaces": ["kube-system"]}
    assert "kube-system" in str(settings.skip_reason(conf, {"K8S_POD_NAMESPACE": "kube-system"}, {}))
    off = settings.pod_overrides({"kuma.io/sidecar-injection": "disabled"}, None)
    assert "sidecar-injection" in str(settings.skip_reason(conf, {}, off))
    assert settings.skip_reason(conf, {"K8S_POD_NAMESPACE": "web"}, {}) is None
    assert settings.skip_reason({"sidecar_injection": False}, {}, {}) is not None
    on = settings.pod_overrides({}, {"kuma.io/sidecar-injection": "true"})
    assert settings.skip_reason({"sidecar_injection": False}, {}, on) is None


# --- the executable, in namespaces ---------------------------------------------------------------------


class Runtime:
    """Calls the plugin the way a container runtime does."""

    def __init__(self, lab: NetnsLab, tmp: Path) -> None:
        self.lab, self.log_file = lab, tmp / "kuma-cni.log"

    def conf(self, **extra: Any) -> dict[str, Any]:
        conf = {"cniVersion": "1.0.0", "name": "podnet", "type": "kuma-cni", "log_file": str(self.log_file)}
        return {**conf, "prevResult": PREV_1_0, **extra}

    def call(
        self, command: str, ns: str | None, conf: dict[str, Any] | bytes, args: str = "", netns: str = ""
    ) -> tuple[int, Any, str]:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "c0ffee",
            "CNI_NETNS": netns or (f"{NETNS_DIR}/{ns}" if ns else ""),
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": args,
            "CNI_PATH": "/usr/lib/cni",
        }
        data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        res = subprocess.run([PLUGIN], input=data, env=env, capture_output=True, timeout=30)
        out = res.stdout.decode()
        return res.returncode, json.loads(out) if out.strip() else None, res.stderr.decode()

    def saved(self, ns: str) -> str:
        return self.lab.run(ns, ["iptables-save"]).stdout + self.lab.run(ns, ["ip6tables-save"]).stdout


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    require_root()
    with NetnsLab(prefix="cni") as lab:
        yield Runtime(lab, tmp_path)


def test_version_lists_the_supported_versions(runtime: Runtime) -> None:
    code, out, _ = runtime.call("VERSION", None, b'{"cniVersion": "0.4.0"}')
    assert code == 0 and out == {"cniVersion": "0.4.0", "supportedVersions": list(spec.SUPPORTED_VERSIONS)}


def test_add_check_del_lifecycle(runtime: Runtime) -> None:
    ns = runtime.lab.namespace()
    code, out, _ = runtime.call("ADD", ns, runtime.conf(), "IgnoreUnknown=1;K8S_POD_NAMESPACE=web")
    assert (code, out) == (0, PREV_1_0)  # prevResult passed through unchanged
    saved = runtime.saved(ns)
    assert "-j KUMA_MESH_OUTBOUND" in saved and "--to-ports 15001" in saved and "--to-ports 15006" in saved
    assert runtime.call("CHECK", ns, runtime.conf())[:2] == (0, None)
    assert runtime.call("ADD", ns, runtime.conf())[0] == 0  # a runtime's retry: same rules, once
    assert runtime.saved(ns).count("-j KUMA_MESH_OUTBOUND") == saved.count("-j KUMA_MESH_OUTBOUND")

    runtime.lab.run(ns, ["iptables", "-t", "nat", "-F", "OUTPUT"], check=True)  # removed by hand
    code, out, _ = runtime.call("CHECK", ns, runtime.conf())
    assert code != 0 and out["code"] == spec.RULES_NOT_IN_PLACE and "not in place" in out["msg"]
    assert "nat/OUTPUT" in out["details"]

    for _ in range(2):  # DEL twice is fine
        assert runtime.call("DEL", ns, runtime.conf())[:2] == (0, None)
        assert "KUMA_MESH" not in runtime.saved(ns)

    mode = stat.S_IMODE(os.stat(runtime.log_file).st_mode)
    assert mode == 0o600
    assert "rules installed" in runtime.log_file.read_text()


def test_netns_given_as_a_proc_path(runtime: Runtime) -> None:
    """Runtimes without named namespaces pass /proc/<pid>/ns/net of the pod's first process."""
    ns = runtime.lab.namespace()
    sleeper = runtime.lab.popen(ns, ["sleep", "30"])
    path = f"/proc/{sleeper.pid}/ns/net"
    assert runtime.call("ADD", None, runtime.conf(), netns=path)[:2] == (0, PREV_1_0)
    assert "-j KUMA_MESH_INBOUND" in runtime.saved(ns)
    assert runtime.call("CHECK", None, runtime.conf(), netns=path)[0] == 0
    assert runtime.call("DEL", None, runtime.conf(), netns=path)[0] == 0
    assert "KUMA_MESH" not in runtime.saved(ns)


def test_del_of_a_namespace_that_is_gone(runtime: Runtime) -> None:
    ns = runtime.lab.namespace()
    assert runtime.call("ADD", ns, runtime.conf())[0] == 0
    runtime.lab.run(ns, ["true"])
    subprocess.run(["ip", "netns", "delete", ns], check=True)
    assert runtime.call("DEL", ns, runtime.conf())[:2] == (0, None)
    assert runtime.call("DEL", None, runtime.conf())[:2] == (0, None)  # no CNI_NETNS at all


def test_pod_settings_and_older_versions(runtime: Runtime) -> None:
    ns = runtime.lab.namespace()
    conf = runtime.conf(cniVersion="0.4.0", transparent_proxy={"redirect": {"outbound": {"port": 15002}}})
    args = "K8S_POD_NAMESPACE=web;kuma.io/transparent-proxying-inbound-port=15010"
    code, out, _ = runtime.call("ADD", ns, conf, args)
    assert code == 0 and out["cniVersion"] == "0.4.0" and out["ips"][0]["version"] == "4"
    saved = runtime.saved(ns)
    assert "--to-ports 15010" in saved and "--to-ports 15002" in saved and "--to-ports 15006" not in saved
    assert runtime.call("CHECK", ns, conf, args)[0] == 0
    code, out, _ = runtime.call("CHECK", ns, {**conf, "cniVersion": "0.3.1"}, args)
    assert code != 0 and out["code"] == spec.INCOMPATIBLE_VERSION  # CHECK came with 0.4.0


def test_dns_capture_per_pod_and_per_node(runtime: Runtime, tmp_path: Path) -> None:
    ns = runtime.lab.namespace()  # lo only, but the kernel has IPv6: rules for both families
    # the pod's annotations: every DNS query, UDP and TCP, to its own port
    args = "K8S_POD_NAMESPACE=web;kuma.io/builtin-dns=enabled;kuma.io/builtin-dns-port=16053"
    assert runtime.call("ADD", ns, runtime.conf(), args)[:2] == (0, PREV_1_0)
    saved = runtime.saved(ns)
    for proto in ("udp", "tcp"):
        assert f"-A OUTPUT -p {proto} -m {proto} --dport 53 -m owner --uid-owner 5678 " in saved
        everything = f"-A OUTPUT -p {proto} -m {proto} --dport 53 -m comment"  # no -d: every address
        assert f'{everything} --comment "kuma/mesh/transparent/proxy/redirect all' in saved
    assert saved.count("-j REDIRECT --to-ports 16053") == 4 and "CT --zone 2" in saved  # UDP, TCP × v4, v6
    assert runtime.call("CHECK", ns, runtime.conf(), args)[0] == 0
    assert runtime.call("CHECK", ns, runtime.conf(), "K8S_POD_NAMESPACE=web")[0] != 0  # without DNS: differs
    assert runtime.call("DEL", ns, runtime.conf(), args)[:2] == (0, None)
    # the node's config: only queries to the nameservers of the node file it names
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 10.96.0.10\n")
    dns = {"enabled": True, "resolvConfigPath": str(resolv_conf)}
    node = runtime.conf(transparent_proxy={"redirect": {"dns": dns}})
    assert runtime.call("ADD", ns, node)[:2] == (0, PREV_1_0)
    saved = runtime.saved(ns)
    assert "-A OUTPUT -d 10.96.0.10/32 -p udp -m udp --dport 53 " in saved
    assert "-A OUTPUT -d 10.96.0.10/32 -p tcp -m tcp --dport 53 " in saved and "redirect all" not in saved
    assert runtime.call("CHECK", ns, node)[0] == 0
    # a node file without nameserver: a config error before the pod is touched
    before = _rules(runtime.saved(ns))
    resolv_conf.write_text("search example.org\n")
    code, out, _ = runtime.call("ADD", ns, node)
    assert code != 0 and out["code"] == spec.INVALID_CONFIG
    assert str(resolv_conf) in out["msg"] and "--redirect-all-dns-traffic" in out["msg"]
    assert _rules(runtime.saved(ns)) == before
    assert runtime.call("DEL", ns, node)[:2] == (0, None)  # DEL does not need the file
    assert "KUMA_MESH" not in runtime.saved(ns)


def _rules(saved: str) -> list[str]:
    return [line for line in saved.splitlines() if not line.startswith("#")]


@pytest.mark.parametrize(
    "args",
    ["K8S_POD_NAMESPACE=kube-system", "K8S_POD_NAMESPACE=web;kuma.io/sidecar-injection=false"],
)
def test_pods_outside_the_mesh_are_untouched(runtime: Runtime, args: str) -> None:
    ns = runtime.lab.namespace()
    before = runtime.saved(ns)
    conf = runtime.conf(exclude_namespaces=["kube-system"])
    assert runtime.call("ADD", ns, conf, args)[:2] == (0, PREV_1_0)
    assert runtime.call("CHECK", ns, conf, args)[0] == 0
    assert runtime.saved(ns) == before
    assert "passed through untouched" in runtime.log_file.read_text()


def _bad_inputs(runtime: Runtime) -> list[tuple[bytes | dict[str, Any], str, int, str]]:
    no_prev = {k: v for k, v in runtime.conf().items() if k != "prevResult"}
    return [
        (b'{"cniVersion": "1.0.0", "name": ', "", spec.DECODING_FAILURE, "not JSON"),
        (runtime.conf(cniVersion="2.7.0"), "", spec.INCOMPATIBLE_VERSION, '"2.7.0"'),
        (no_prev, "", spec.INVALID_CONFIG, "prevResult"),
        (runtime.conf(), "kuma.io/transparent-proxying-inbound-port=x", spec.INVALID_CONFIG, "inbound-port"),
        (runtime.conf(), "traffic.kuma.io/exclude-outbound-ports=1-99999", spec.INVALID_CONFIG, "99999"),
        (runtime.conf(), "K8S_POD_NAME", spec.INVALID_ENVIRONMENT, "CNI_ARGS"),
    ]


def test_bad_input_is_a_spec_error_and_leaves_the_namespace_untouched(runtime: Runtime) -> None:
    ns = runtime.lab.namespace()
    before = runtime.saved(ns)
    for conf, args, code, words in _bad_inputs(runtime):
        rc, out, stderr = runtime.call("ADD", ns, conf, args)
        assert rc != 0, (conf, args)
        assert set(out) == {"cniVersion", "code", "msg", "details"}
        assert out["code"] == code and words in out["msg"] + out["details"], out
        assert "Traceback" not in stderr
        assert runtime.saved(ns) == before
    rc, out, _ = runtime.call("ADD", ns, runtime.conf(), netns="/etc/hostname")  # not a namespace
    assert rc != 0 and out["code"] == spec.UNKNOWN_CONTAINER and "/etc/hostname" in out["msg"]
    rc, out, _ = runtime.call("GC", ns, runtime.conf())
    assert rc != 0 and out["code"] == spec.INVALID_ENVIRONMENT


def test_unwritable_log_file_falls_back_to_stderr(runtime: Runtime) -> None:
    ns = runtime.lab.namespace()
    conf = runtime.conf(log_file="/proc/no-such-dir/kuma-cni.log")
    rc, out, stderr = runtime.call("ADD", ns, conf, "kuma.io/transparent-proxying-inbound-port=0")
    assert rc != 0 and out["code"] == spec.INVALID_CONFIG  # stdout: the JSON only
    assert "cannot open the log file" in stderr and "inbound-port" in stderr


def test_add_imports_only_what_it_needs(runtime: Runtime) -> None:
    """A runtime waits on the plugin for every pod: no pyroute2, YAML, click or pydantic on ADD."""
    ns = runtime.lab.namespace()
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c"}
    env |= {"CNI_NETNS": f"{NETNS_DIR}/{ns}", "CNI_IFNAME": "eth0"}
    res = subprocess.run([PLUGIN], input=json.dumps(runtime.conf()).encode(), env=env, capture_output=True)
    assert res.returncode == 0, res.stdout
    imported = {line.split("|")[-1].strip() for line in res.stderr.decode().splitlines() if "|" in line}
    assert "transparent_proxy.apply" in imported
    assert not imported & {"pyroute2", "yaml", "click", "pydantic", "httpx", "grpc"}
