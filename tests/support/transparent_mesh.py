"""Two network namespaces ("hosts") joined by a veth pair with the real programs on them: the control
plane on host a; on each host `kumactl install transparent-proxy`, an app serving HTTP as an ordinary
user, and `kuma-dp run` as the proxy UID 5678 (`TransparentMesh`, `transparent_mesh()`). Root only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from control_plane.dp_server.tls import self_signed_pem
from kuma_common.dp_contract import ADMIN_SOCKET_NAME
from labkit.lab import BIN, without_kuma_vars
from labkit.waiting import wait_until
from tests.support.netns_lab import PEER_ECHO_APP, NetnsLab

PROXY_UID = 5678
USER_UID = 1000
APP_PORT = 8080
UNDECLARED_PORT = 9090  # served by host b's app, known to no Dataplane
EXCLUDED_PORT = 9091  # excluded outbound on host a, inbound on host b


@dataclass
class Host:
    ns: str
    ip: str
    work_dir: Path  # the agent's

    def admin(self) -> httpx.Client:
        sock = self.work_dir / ADMIN_SOCKET_NAME
        assert sock.exists(), f"no admin socket; {self.work_dir} holds {sorted(os.listdir(self.work_dir))}"
        transport = httpx.HTTPTransport(uds=str(sock))
        return httpx.Client(transport=transport, base_url="http://envoy", timeout=5)

    def stat(self, name: str) -> int:
        with self.admin() as admin:
            text = admin.get("/stats", params={"filter": f"^{name}$"}).text
        return int(text.split(":")[-1]) if text.strip() else 0


class TransparentMesh:
    def __init__(self, lab: NetnsLab, root: Path, cp_env: dict[str, str] | None = None) -> None:
        """`cp_env`: the control plane's settings over the defaults here (memory store, ...)."""
        self._settle(lab, root, cp_env)
        subnet = f"10.252.{secrets.randbelow(250) + 1}"
        a, b = lab.namespace(), lab.namespace()
        lab.veth(a, f"{subnet}.1/24", b, f"{subnet}.2/24")
        self.a = Host(a, f"{subnet}.1", root / "a-dp")
        self.b = Host(b, f"{subnet}.2", root / "b-dp")

    def _settle(self, lab: NetnsLab, root: Path, cp_env: dict[str, str] | None) -> None:
        """What every mesh of namespaces has, whoever made the namespaces (see test_cni_chain)."""
        self.lab, self.root = lab, root
        self.cp_env = {"KUMA_STORE_TYPE": "memory", **(cp_env or {})}
        self.cp: subprocess.Popen[str] | None = None
        os.chmod(root, 0o755)

    # --- parts ------------------------------------------------------------------------------------
    def log(self, name: str) -> object:
        return (self.root / f"{name}.log").open("w")

    def start_control_plane(self) -> None:
        cert, key = self.root / "cp.crt", self.root / "cp.key"
        cert_pem, key_pem = self_signed_pem(["localhost", "127.0.0.1", self.a.ip])
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        os.chmod(cert, 0o644)
        os.chmod(key, 0o600)
        self._run_control_plane()

    def restart_control_plane(self) -> None:
        """Stop kuma-cp (SIGTERM, as systemd would) and start it again with the same settings."""
        assert self.cp is not None
        self.cp.terminate()
        self.cp.wait(30)
        self._run_control_plane()

    def _run_control_plane(self) -> None:
        env = {
            **without_kuma_vars(dict(os.environ)),  # kuma-cp refuses KUMA_* names it does not know
            "KUMA_GENERAL_WORK_DIR": str(self.root / "cp"),
            "KUMA_GENERAL_TLS_CERT_FILE": str(self.root / "cp.crt"),
            "KUMA_GENERAL_TLS_KEY_FILE": str(self.root / "cp.key"),
            **self.cp_env,
        }
        log = (self.root / "cp.log").open("a")
        self.cp = self.lab.popen(self.a.ns, [str(BIN / "kuma-cp"), "run"], env=env, stdout=log, stderr=-2)
        wait_until(lambda: self.curl(self.a, "http://127.0.0.1:5681/").returncode == 0, timeout=30)

    def kumactl(self, *args: str, stdin: str | None = None) -> str:
        res = self.lab.run(self.a.ns, [str(BIN / "kumactl"), *args], input=stdin)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    def install_transparent_proxy(self, host: Host, *flags: str) -> None:
        argv = [
            str(BIN / "kumactl"),
            "install",
            "transparent-proxy",
            "--kuma-dp-user",
            str(PROXY_UID),
            *flags,
        ]
        res = self.lab.run(host.ns, argv)
        assert res.returncode == 0, res.stdout + res.stderr

    def start_app(self, host: Host, *ports: int) -> None:
        self.lab.python(
            host.ns,
            PEER_ECHO_APP,
            *map(str, ports),
            uid=USER_UID,
            stdout=self.log(f"app-{host.ns}"),
            stderr=-2,
        )
        wait_until(lambda: self.curl(host, f"http://127.0.0.1:{ports[0]}/").returncode == 0, timeout=10)

    def start_agent(
        self,
        host: Host,
        name: str,
        service: str,
        *,
        work_dir: Path | None = None,
        readiness_port: int = 9902,
        inbound: dict[str, object] | None = None,
        outbounds: dict[str, int] | None = None,
    ) -> None:
        """An agent as the proxy UID; transparent unless `outbounds` ({service: local port}) are given."""
        work_dir = work_dir or host.work_dir
        token = self.root / f"{name}.token"
        token.write_text(
            self.kumactl("generate", "dataplane-token", "--name", name, "--valid-for", "1h").strip()
        )
        tags = {"kuma.io/service": service, "kuma.io/protocol": "http"}
        networking: dict[str, object] = {
            "address": host.ip,
            "inbound": [{**(inbound or {"port": APP_PORT}), "tags": tags}],
        }
        if outbounds:
            networking["outbound"] = [
                {"port": p, "tags": {"kuma.io/service": s}} for s, p in outbounds.items()
            ]
        else:
            networking["transparentProxying"] = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}
        dataplane = {"type": "Dataplane", "mesh": "default", "name": name, "networking": networking}
        dp_file = self.root / f"{name}.yaml"
        dp_file.write_text(yaml.safe_dump(dataplane))
        work_dir.mkdir(mode=0o700)
        for path in (token, dp_file, work_dir):
            os.chown(path, PROXY_UID, PROXY_UID)
        token.chmod(0o600)
        argv = [
            str(BIN / "kuma-dp"), "run",
            # On the control plane's own host the proxy UID's traffic to a local address other
            # than 127.0.0.1 goes to its inbound listener (Kuma's rule), so use localhost there.
            "--cp-address", f"https://{'localhost' if host is self.a else self.a.ip}:5678",
            "--ca-cert-file", str(self.root / "cp.crt"),
            "--dataplane-file", str(dp_file),
            "--dataplane-token-file", str(token),
            "--work-dir", str(work_dir),
            "--drain-time", "1s",
        ]  # fmt: skip
        env = {**os.environ, "KUMA_READINESS_PORT": str(readiness_port)}
        agent = self.lab.popen(
            host.ns, argv, uid=PROXY_UID, env=env, stdout=self.log(f"dp-{name}"), stderr=-2
        )
        try:
            wait_until(
                lambda: self.ready(host, readiness_port) if agent.poll() is None else _stop(), timeout=30
            )
        except AssertionError:
            log = (self.root / f"dp-{name}.log").read_text().splitlines()
            raise AssertionError(
                f"agent {name} not READY (exit {agent.poll()}):\n" + "\n".join(log[-15:])
            ) from None

    def ready(self, host: Host, port: int = 9902) -> bool:
        return self.curl(host, f"http://127.0.0.1:{port}/ready").stdout.strip() == "READY"

    def curl(self, host: Host, url: str, uid: int | None = None) -> object:
        return self.lab.run(host.ns, ["curl", "-sS", "--max-time", "5", url], uid=uid)

    def get(self, url: str, uid: int = USER_UID) -> str:
        """`curl` from a user process on host a; the body, or an assertion naming curl's error."""
        res = self.curl(self.a, url, uid=uid)
        assert res.returncode == 0, f"curl {url} failed: {res.stderr}"
        return res.stdout


def _stop() -> bool:
    raise AssertionError("the process exited")


@contextlib.contextmanager
def transparent_mesh(
    cp_env: dict[str, str] | None = None,
    prepare: Callable[[TransparentMesh], None] | None = None,
    a_flags: Sequence[str] = (),
) -> Iterator[TransparentMesh]:
    """Host a (control plane, web-1) and host b (backend-1), both with transparent proxying.
    `cp_env`: control-plane settings; `prepare`: called before anything starts (e.g. to give a
    namespace its resolv.conf); `a_flags`: more `kumactl install transparent-proxy` flags for a."""
    # Not pytest's tmp_path: it is private to root, and the agent runs as the proxy's UID.
    root = Path(tempfile.mkdtemp(prefix="kuma-e2e-tp-"))
    lab = NetnsLab(prefix="e2etp")
    try:
        mesh = TransparentMesh(lab, root, cp_env)
        if prepare is not None:
            prepare(mesh)
        mesh.start_control_plane()
        mesh.install_transparent_proxy(
            mesh.a,
            "--exclude-inbound-ports",
            "5678,5681",
            "--exclude-outbound-ports",
            str(EXCLUDED_PORT),
            *a_flags,
        )
        mesh.install_transparent_proxy(mesh.b, "--exclude-inbound-ports", str(EXCLUDED_PORT))
        mesh.start_app(mesh.a, APP_PORT)
        mesh.start_app(mesh.b, APP_PORT, UNDECLARED_PORT, EXCLUDED_PORT)
        mesh.start_agent(mesh.a, "web-1", "web")
        mesh.start_agent(mesh.b, "backend-1", "backend")
        yield mesh
    finally:
        lab.close()
        if not os.environ.get("KUMA_TEST_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
