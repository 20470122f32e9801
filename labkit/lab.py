"""A one-machine mesh lab: the control plane, apps and agents as real processes on loopback.

Used by the demo, the end-to-end tests and the benchmarks, so all exercise exactly what a user runs.
Every process is started in its own session, logs to a file in the lab dir, and is stopped
(SIGTERM, then SIGKILL) by `Lab.close()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from kuma_common.dp_contract import ADMIN_SOCKET_NAME
from labkit.ports import free_port, port_open
from labkit.waiting import NotMet, wait_until

BIN = Path(sys.executable).parent
# Every service of mesh `default` may call every other. With mTLS on, a call no
# MeshTrafficPermission allows is denied (Kuma's zero trust), so meshes with mTLS apply it, as
# Kuma's docs do.
ALLOW_ALL_PERMISSION = """
type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
"""
# The default mesh with mutual TLS from its builtin CA (what the demo and the benchmarks turn on).
MTLS_MESH = (
    """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---"""
    + ALLOW_ALL_PERMISSION
)


class LabError(Exception):
    """A lab process did not come up; the message includes the end of its log."""


def wait_for(what: str, check: Callable[[], bool], timeout: float, proc: Proc | None = None) -> None:
    """Poll `check` (connection errors count as "not yet"); LabError, with the end of `proc`'s log,
    when `proc` exits first or at the deadline."""

    def ready() -> bool:
        if proc is not None and proc.popen.poll() is not None:
            raise LabError(
                f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}\n{proc.log_tail()}"
            )
        return check()

    try:
        wait_until(ready, timeout, what=what, retry_on=(httpx.HTTPError, OSError))
    except NotMet:
        tail = proc.log_tail() if proc else ""
        raise LabError(f"timed out after {timeout}s waiting for {what}\n{tail}") from None


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in text[-lines:])

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            return self.popen.wait(5)


@dataclass
class ControlPlaneProc:
    proc: Proc
    work_dir: Path
    api_url: str
    dp_port: int
    diagnostics_url: str = ""  # /metrics, /ready, /healthy
    https_api_url: str = ""  # the same API over TLS (the CP's certificate: ca_cert)

    @property
    def ca_cert(self) -> Path:
        return self.work_dir / "kuma-cp.crt"

    @property
    def dp_url(self) -> str:
        return f"https://localhost:{self.dp_port}"


@dataclass
class AgentProc:
    proc: Proc
    name: str
    work_dir: Path
    readiness_port: int

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.readiness_port}/ready"

    def is_ready(self) -> bool:
        return httpx.get(self.ready_url, timeout=1).text.strip() == "READY"

    def envoy_admin(self) -> httpx.Client:
        """A client for this agent's Envoy admin (a Unix socket in its work dir)."""
        transport = httpx.HTTPTransport(uds=str(self.work_dir / ADMIN_SOCKET_NAME))
        return httpx.Client(transport=transport, base_url="http://envoy-admin", timeout=5)

    def envoy_stats(self) -> dict[str, int]:
        with self.envoy_admin() as admin:
            stats = admin.get("/stats", params={"format": "json"}).json()["stats"]
        return {s["name"]: s["value"] for s in stats if isinstance(s.get("value"), int)}


@dataclass
class Lab:
    root: Path
    procs: list[Proc] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    _kumactl_target: str = ""

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, inherit_kuma: bool = True
    ) -> Proc:
        """`inherit_kuma=False`: the lab's own KUMA_* variables only, none from the caller's
        environment (kuma-cp refuses a KUMA_* name no Kuma program has, e.g. KUMA_TEST_KEEP)."""
        log = self.root / f"{name}.log"
        base = self.env if inherit_kuma else without_kuma_vars(self.env)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**base, **(env or {})},
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_control_plane(
        self,
        api_port: int | None = None,
        dp_port: int | None = None,
        work_dir: Path | None = None,
        **env: str,
    ) -> ControlPlaneProc:
        api_port = api_port or free_port()
        dp_port = dp_port or free_port()
        # Not Kuma's 5680: several labs may run at once.
        diagnostics_port = int(env.get("KUMA_DIAGNOSTICS_SERVER_PORT") or free_port())
        work_dir = work_dir or self.root / "kuma-cp"
        https_port = int(env.get("KUMA_API_SERVER_HTTPS_PORT") or free_port())
        cp_env = {
            "KUMA_GENERAL_WORK_DIR": str(work_dir),
            "KUMA_API_SERVER_HTTP_PORT": str(api_port),
            "KUMA_API_SERVER_HTTP_INTERFACE": "127.0.0.1",
            "KUMA_API_SERVER_HTTPS_PORT": str(https_port),  # not Kuma's 5682: labs run side by side
            "KUMA_API_SERVER_HTTPS_INTERFACE": "127.0.0.1",
            "KUMA_DP_SERVER_PORT": str(dp_port),
            "KUMA_DIAGNOSTICS_SERVER_PORT": str(diagnostics_port),
            # Prometheus discovery (5676 by default): one port per lab, so labs run side by side.
            "KUMA_MONITORING_ASSIGNMENT_SERVER_PORT": str(free_port()),
            **env,
        }
        proc = self.spawn("kuma-cp", [str(BIN / "kuma-cp"), "run"], cp_env, inherit_kuma=False)
        cp = ControlPlaneProc(
            proc,
            work_dir,
            f"http://127.0.0.1:{api_port}",
            dp_port,
            f"http://127.0.0.1:{diagnostics_port}",
            f"https://localhost:{https_port}",
        )
        return cp

    def wait_control_plane(self, cp: ControlPlaneProc, timeout: float = 30) -> None:
        wait_for(
            "the control plane API",
            lambda: httpx.get(cp.api_url, timeout=1).status_code == 200,
            timeout,
            cp.proc,
        )
        wait_for("the DP server", lambda: port_open(cp.dp_port), timeout, cp.proc)

    def start_app(self, role: str, instance: str, port: int, backend_url: str = "") -> Proc:
        argv = [sys.executable, "-m", "demo.apps", role, "--port", str(port), "--instance", instance]
        if backend_url:
            argv += ["--backend-url", backend_url]
        proc = self.spawn(instance + "-app", argv)
        wait_for(f"app {instance} on :{port}", lambda: port_open(port), 10, proc)
        return proc

    def dataplane_token(self, cp: ControlPlaneProc, name: str, mesh: str = "default") -> Path:
        """A token for dataplane `name`, from the real `kumactl generate dataplane-token`, in a 0600 file."""
        res = self.kumactl(
            cp, "generate", "dataplane-token", "--name", name, "--mesh", mesh, "--valid-for", "24h"
        )
        if res.returncode != 0:
            raise LabError(f"kumactl generate dataplane-token failed: {res.stderr.strip()}")
        path = self.root / f"{name}.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(res.stdout.strip())
        return path

    def start_agent(
        self,
        cp: ControlPlaneProc,
        dataplane: dict[str, Any],
        *extra: str,
        token_file: Path | None = None,
        **env: str,
    ) -> AgentProc:
        """`kuma-dp run` for `dataplane`, with a fresh token unless `token_file` is given."""
        name = dataplane["name"]
        token_file = token_file or self.dataplane_token(cp, name, dataplane.get("mesh", "default"))
        work_dir = self.root / f"{name}-dp"
        dp_file = self.root / f"{name}.yaml"
        dp_file.write_text(yaml.safe_dump(dataplane, sort_keys=False))
        readiness = free_port()
        argv = [
            str(BIN / "kuma-dp"), "run",
            "--cp-address", cp.dp_url,
            "--ca-cert-file", str(cp.ca_cert),
            "--dataplane-file", str(dp_file),
            "--work-dir", str(work_dir),
            "--dataplane-token-file", str(token_file),
            "--drain-time", "2s",
            *extra,
        ]  # fmt: skip
        proc = self.spawn(f"{name}-dp", argv, {"KUMA_READINESS_PORT": str(readiness), **env})
        return AgentProc(proc, name, work_dir, readiness)

    def wait_ready(self, agent: AgentProc, timeout: float = 30) -> None:
        wait_for(f"agent {agent.name} READY", agent.is_ready, timeout, agent.proc)

    def kumactl(
        self, cp: ControlPlaneProc, *args: str, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "KUMACTL_CONFIG": str(self.root / "kumactl.yaml")}
        base = [str(BIN / "kumactl")]
        if self._kumactl_target != cp.api_url:
            add = ["config", "control-planes", "add", "--name", "lab", "--address", cp.api_url, "--overwrite"]
            subprocess.run([*base, *add], env=env, capture_output=True, text=True, check=True)
            self._kumactl_target = cp.api_url
        return subprocess.run(
            [*base, *args], env=env, input=input, capture_output=True, text=True, timeout=30
        )

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                proc.stop()
        self.procs.clear()


def without_kuma_vars(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("KUMA_")}


def dataplane(
    name: str, service: str, port: int, service_port: int, outbounds: dict[str, int] | None = None
) -> dict[str, Any]:
    """A universal Dataplane on loopback: one HTTP inbound, optional outbounds {service: port}."""
    networking: dict[str, Any] = {
        "address": "127.0.0.1",
        "inbound": [
            {
                "port": port,
                "servicePort": service_port,
                "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"},
            }
        ],
    }
    if outbounds:
        networking["outbound"] = [{"port": p, "tags": {"kuma.io/service": s}} for s, p in outbounds.items()]
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": networking}


def pretty(obj: Any) -> str:
    return json.dumps(obj, indent=2)
