"""Two network namespaces ("hosts") joined by a veth pair, in each an app and a REAL Envoy (run as
the proxy UID 5678) configured by our ADS server over a Unix socket, behind hand-written iptables
REDIRECT rules (a minimal version of Kuma's): `mesh_of_two()`, and what the tests ask of the hosts
(`curl`, `admin_get`, `counter`). Root only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from control_plane.store.base import ResourceKey, dataplane_key, mesh_key
from control_plane.store.memory import MemoryStore
from labkit.lab import ALLOW_ALL_PERMISSION
from labkit.waiting import eventually
from tests.support.mesh_ca import MeshCa
from tests.support.netns_lab import PEER_ECHO_APP, require_root
from tests.support.xds_control_plane import bootstrap_json, control_plane

PROXY_UID = 5678  # Kuma's kuma-dp UID: its traffic is never redirected
APP_UID = 4321  # anybody else: always redirected
APP_PORT = 8080  # declared inbound of each host (the app's own port under transparent proxying)
UNDECLARED_PORT = 9090  # served by the app of host b, known to no Dataplane
TP = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}

# A minimal version of Kuma's rules (reference.md): inbound TCP → 15006; outbound TCP of anybody but
# the proxy → 15001; the proxy's own connections to the app (from 127.0.0.6) pass untouched.
RULES = """*nat
:KUMA_MESH_INBOUND - [0:0]
:KUMA_MESH_OUTBOUND - [0:0]
-A PREROUTING -p tcp -j KUMA_MESH_INBOUND
-A OUTPUT -p tcp -j KUMA_MESH_OUTBOUND
-A KUMA_MESH_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A KUMA_MESH_OUTBOUND -s 127.0.0.6/32 -o lo -j RETURN
-A KUMA_MESH_OUTBOUND ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner {uid} -j REDIRECT --to-ports 15006
-A KUMA_MESH_OUTBOUND -o lo -p tcp -m owner ! --uid-owner {uid} -j RETURN
-A KUMA_MESH_OUTBOUND -m owner --uid-owner {uid} -j RETURN
-A KUMA_MESH_OUTBOUND -d 127.0.0.1/32 -j RETURN
-A KUMA_MESH_OUTBOUND -p tcp -j REDIRECT --to-ports 15001
COMMIT
"""


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result.stdout


@dataclass
class Host:
    ns: str
    address: str
    name: str
    service: str
    workdir: Path

    def exec(self, *command: str, uid: int | None = None) -> list[str]:
        """A command line that runs `command` inside this namespace, as `uid` if given."""
        prefix = ["ip", "netns", "exec", self.ns]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return [*prefix, *command]

    @property
    def admin_socket(self) -> Path:
        return self.workdir / "admin.sock"

    def dataplane(self) -> dict[str, Any]:
        inbound = [{"port": APP_PORT, "tags": {"kuma.io/service": self.service, "kuma.io/protocol": "http"}}]
        networking = {"address": self.address, "inbound": inbound, "transparentProxying": TP}
        return {"type": "Dataplane", "mesh": "default", "name": self.name, "networking": networking}


def host_subnet() -> str:
    """The /24 (first three octets) of this test process's hosts."""
    return f"10.251.{os.getpid() % 250 + 1}"


@contextlib.contextmanager
def two_hosts(root: Path) -> Iterator[tuple[Host, Host]]:
    """Namespaces `<tag>-a` and `<tag>-b`, a veth pair between them, the rules in each; all removed
    at the end, pass or fail."""
    tag = f"kuma-tp-{os.getpid()}"
    subnet = host_subnet()
    hosts = (
        Host(f"{tag}-a", f"{subnet}.1", "web-1", "web", root / "a"),
        Host(f"{tag}-b", f"{subnet}.2", "backend-1", "backend", root / "b"),
    )
    veths = (f"ktp{os.getpid() % 100000}a", f"ktp{os.getpid() % 100000}b")
    created: list[str] = []
    try:
        for host in hosts:
            run("ip", "netns", "add", host.ns)
            created.append(host.ns)
        run(
            "ip",
            "link",
            "add",
            veths[0],
            "netns",
            hosts[0].ns,
            "type",
            "veth",
            "peer",
            "name",
            veths[1],
            "netns",
            hosts[1].ns,
        )
        for host, veth in zip(hosts, veths, strict=True):
            run(*host.exec("ip", "link", "set", "lo", "up"))
            run(*host.exec("ip", "addr", "add", f"{host.address}/24", "dev", veth))
            run(*host.exec("ip", "link", "set", veth, "up"))
            subprocess.run(
                host.exec("iptables-restore", "--noflush", "--wait", "5"),
                input=RULES.format(uid=PROXY_UID),
                text=True,
                check=True,
                timeout=20,
            )
            host.workdir.mkdir(mode=0o755)
            os.chown(host.workdir, PROXY_UID, PROXY_UID)  # Envoy (UID 5678) makes its admin socket here
        yield hosts
    finally:
        for ns in created:  # the veth pair and the rules go with the namespaces
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


class Processes:
    """Every process the test starts, each in its own process group, all stopped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((name, process))
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for _, process in reversed(self.started):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for _, process in self.started:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.asynccontextmanager
async def ads_server(socket_path: Path) -> AsyncIterator[MemoryStore]:
    """Our ADS server (XdsComponent over a MemoryStore) on a Unix socket both namespaces can reach."""
    async with control_plane(f"unix:{socket_path}", debounce_s=0.05) as cp:
        socket_path.chmod(0o666)  # Envoy runs as the proxy UID
        yield cp.store


def write_bootstrap(host: Host, ads_socket: Path) -> Path:
    pipe = {"pipe": {"path": str(host.admin_socket)}}
    text = bootstrap_json(host.dataplane(), host.workdir, pipe, {"pipe": {"path": str(ads_socket)}})
    path = host.workdir / "bootstrap.yaml"
    path.write_text(text)
    path.chmod(0o644)
    return path


async def admin_get(host: Host, path: str) -> str:
    transport = httpx.AsyncHTTPTransport(uds=str(host.admin_socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://envoy", timeout=2) as client:
        return (await client.get(path)).text


async def counter(host: Host, name: str) -> int:
    text = await admin_get(host, f"/stats?filter=^{re.escape(name)}$")
    match = re.search(r": (\d+)$", text.strip())
    return int(match.group(1)) if match else 0


async def curl(host: Host, url: str, uid: int = APP_UID) -> subprocess.CompletedProcess[str]:
    command = host.exec("curl", "-sS", "--max-time", "5", url, uid=uid)
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=20)


async def _true(value: bool) -> bool:
    return value


def listener_stat(address: str, port: int, stat: str) -> str:
    return f"listener.{address}_{port}.{stat}"


@contextlib.asynccontextmanager
async def mesh_of_two(
    envoy_binary: Path, mesh_spec: dict[str, Any], others: Sequence[dict[str, Any]] = ()
) -> AsyncIterator[tuple[Host, Host]]:
    """Two hosts, each with its app and its Envoy configured by our ADS server for a mesh made of
    `mesh_spec` and `others` (Dataplane documents with no Envoy of their own); with mTLS on, each
    proxy's SDS files are written first, as kuma-dp does."""
    require_root()
    root = Path(tempfile.mkdtemp(prefix="kuma-tp-"))
    root.chmod(0o755)
    processes = Processes(root)
    try:
        with two_hosts(root) as (web, backend):
            async with ads_server(root / "ads.sock") as store:
                store.upsert(mesh_key("default"), mesh_spec)
                for other in others:
                    spec = {k: v for k, v in other.items() if k not in ("type", "mesh", "name")}
                    store.upsert(dataplane_key(other["name"]), spec)
                if mesh_spec.get("mtls"):  # with mTLS on, nobody may call without a permission
                    allow_all = yaml.safe_load(ALLOW_ALL_PERMISSION)
                    key = ResourceKey(allow_all["type"], "default", allow_all["name"])
                    store.upsert(key, {"spec": allow_all["spec"]})
                    write_identities(web, backend)
                for host in (web, backend):
                    start_app_and_envoy(processes, host, envoy_binary, root / "ads.sock")
                await wait_configured(web, backend)
                for host in (web, backend):
                    await eventually(
                        lambda h=host: _true(processes.log(f"app-{h.name}").startswith("ready")),
                        timeout=15,
                        what=f"app of {host.name} listening",
                    )
                yield web, backend
    except BaseException:
        for name, _ in processes.started:
            print(f"--- {name}\n{processes.log(name)[-3000:]}")
        raise
    finally:
        processes.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def start_app_and_envoy(processes: Processes, host: Host, envoy_binary: Path, ads_socket: Path) -> None:
    ports = [str(APP_PORT)] + ([str(UNDECLARED_PORT)] if host.service == "backend" else [])
    processes.start(f"app-{host.name}", host.exec(sys.executable, "-c", PEER_ECHO_APP, *ports))
    config = write_bootstrap(host, ads_socket)
    envoy = [str(envoy_binary), "--config-path", str(config), "--disable-hot-restart", "--concurrency", "1"]
    processes.start(f"envoy-{host.name}", host.exec(*envoy, "--log-level", "warning", uid=PROXY_UID))


def write_identities(*hosts: Host) -> None:
    """A mesh CA and, per proxy, the SDS files kuma-dp would keep (readable by the proxy UID)."""
    ca = MeshCa()
    for host in hosts:
        ca.write_sds_files(host.workdir, host.service)
        for path in (host.workdir / "identity", *(host.workdir / "identity").rglob("*")):
            os.chown(path, PROXY_UID, PROXY_UID)


async def wait_configured(web: Host, backend: Host) -> None:
    async def ready() -> bool:
        web_listeners = await admin_get(web, "/listeners")
        backend_listeners = await admin_get(backend, "/listeners")
        return (
            f"inbound:{backend.address}:{APP_PORT}" in backend_listeners
            and "outbound:passthrough:ipv4" in web_listeners
            and "inbound:passthrough:ipv4" in backend_listeners
        )

    await eventually(ready, timeout=15, what="both Envoys have their transparent listeners")

    async def has_endpoint() -> bool:
        return f"backend::{backend.address}:{APP_PORT}::" in await admin_get(web, "/clusters")

    await eventually(has_endpoint, timeout=15, what="web's Envoy knows backend's endpoint")

    async def routes_backend() -> bool:
        return f'"{backend.address}"' in await admin_get(web, "/config_dump?resource=dynamic_listeners")

    await eventually(routes_backend, timeout=15, what="web's 15001 listener routes backend's address")
