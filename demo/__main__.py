"""Mesh in a box: our control plane configures two real Envoys over xDS, and a request travels
client → web's Envoy → web → web's Envoy (outbound) → backend's Envoy → backend.

Run with `bash scripts/demo.sh` (or `.venv/bin/python -m demo`). No root, loopback only.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

from labkit.lab import MTLS_MESH, AgentProc, Lab, LabError, dataplane, wait_for
from labkit.ports import free_port

DEFAULT_API_PORT = 5681
DEFAULT_DP_PORT = 5678


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5, help="requests to send through the mesh")
    parser.add_argument("--keep", action="store_true", help="keep the lab directory (logs) afterwards")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kuma-demo-"))
    lab = Lab(root)
    try:
        run_demo(lab, args.requests)
        return 0
    except LabError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        lab.close()
        if args.keep:
            print(f"\nlogs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run_demo(lab: Lab, requests: int) -> None:
    step = _Steps(8)
    api_port = _port_or_free(DEFAULT_API_PORT)
    dp_port = _port_or_free(DEFAULT_DP_PORT)
    step(
        f"control plane: kuma-cp run (API http://127.0.0.1:{api_port}, DP server https://localhost:{dp_port})"
    )
    cp = lab.start_control_plane(api_port, dp_port)
    lab.wait_control_plane(cp)

    ports = {name: free_port() for name in ("web_app", "web_in", "web_out", "backend_app", "backend_in")}
    step(f"apps: backend-1 on 127.0.0.1:{ports['backend_app']}, web-1 on 127.0.0.1:{ports['web_app']}")
    lab.start_app("backend", "backend-1", ports["backend_app"])
    lab.start_app("web", "web-1", ports["web_app"], backend_url=f"http://127.0.0.1:{ports['web_out']}")

    step("agents: kuma-dp run beside each app, each with its own dataplane token (kumactl generate")
    print("      dataplane-token): bootstrap, its own key + certificate, then Envoy, then xDS")
    started = time.monotonic()
    backend_dp = dataplane("backend-1", "backend", ports["backend_in"], ports["backend_app"])
    web_dp = dataplane(
        "web-1", "web", ports["web_in"], ports["web_app"], outbounds={"backend": ports["web_out"]}
    )
    agents = [lab.start_agent(cp, backend_dp), lab.start_agent(cp, web_dp)]
    for agent in agents:
        lab.wait_ready(agent)
    print(f"      both agents READY in {time.monotonic() - started:.1f}s")

    step("kumactl get dataplanes (registered by the agents themselves)")
    print(_indent(lab.kumactl(cp, "get", "dataplanes").stdout))

    step(
        f"requests: client → web Envoy inbound :{ports['web_in']} → web app → web Envoy outbound "
        f":{ports['web_out']} → backend Envoy inbound :{ports['backend_in']} → backend app"
    )
    for i in range(requests):
        resp = httpx.get(f"http://127.0.0.1:{ports['web_in']}/hello/{i}", timeout=5)
        print(f"      GET /hello/{i} → {resp.status_code} {resp.text}")
        if resp.status_code != 200:
            raise LabError(f"request {i} failed with {resp.status_code}: {resp.text}")

    step("what each Envoy counted (stats from its admin socket)")
    for agent in agents:
        _print_traffic(agent)

    step(
        "mTLS on: kumactl apply a Mesh with a builtin CA backend (STRICT, as Kuma's default) and a "
        "MeshTrafficPermission allowing every caller (with mTLS on, none is allowed by default)"
    )
    lab.kumactl(cp, "apply", "-f", "-", input=MTLS_MESH)
    web_app = f"http://127.0.0.1:{ports['web_app']}"
    _wait_for_caller(web_app)
    for agent in agents:
        print(f"      {agent.name}'s Envoy presents {_identity(agent)}")
    for i in range(min(requests, 3)):
        resp = httpx.get(f"{web_app}/secure/{i}", timeout=5)
        xfcc = resp.json()["backend"].get("caller", "")
        caller = next((p[4:] for p in xfcc.split(";") if p.startswith("URI=")), "(none)")
        print(f"      web → backend GET /secure/{i} → {resp.status_code}; backend's app saw caller {caller}")

    step("STRICT refuses what is not mesh mTLS")
    try:
        refused = httpx.get(f"http://127.0.0.1:{ports['backend_in']}/plaintext", timeout=3)
        raise LabError(f"plaintext to backend's inbound was answered ({refused.status_code})")
    except httpx.HTTPError as exc:
        inbound = ports["backend_in"]
        print(f"      plaintext GET to backend's Envoy inbound :{inbound} → refused ({type(exc).__name__})")


def _wait_for_caller(web_app: str, timeout: float = 15) -> None:
    """Until backend's Envoy forwards the caller's identity: mTLS has reached both Envoys."""

    def forwarded() -> bool:
        try:
            return "caller" in httpx.get(f"{web_app}/probe", timeout=2).json()["backend"]
        except (ValueError, KeyError):
            return False

    wait_for("mTLS to take effect (backend's Envoy forwarding the caller's identity)", forwarded, timeout)


def _identity(agent: AgentProc) -> str:
    """The SPIFFE URI, serial and expiry of the workload certificate Envoy serves (admin /certs)."""
    with agent.envoy_admin() as admin:
        certs = admin.get("/certs").json()["certificates"]
    for entry in certs:
        for cert in entry.get("cert_chain", []):
            uris = [san["uri"] for san in cert.get("subject_alt_names", []) if "uri" in san]
            if uris:
                serial, expires = cert["serial_number"][:12], cert["expiration_time"]
                return f"{', '.join(uris)} (serial {serial}…, expires {expires})"
    return "no certificate"


def _print_traffic(agent: AgentProc) -> None:
    stats = agent.envoy_stats()
    print(f"      {agent.name}:")
    for name, value in sorted(stats.items()):
        listener = name.startswith("http.") and name.endswith(".downstream_rq_completed")
        cluster = name.startswith("cluster.") and name.endswith(".upstream_rq_completed")
        internal = "ads_cluster" in name or "admin" in name or ".external." in name
        if (listener or cluster) and value and not internal:
            print(f"        {name} = {value}")


class _Steps:
    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {text}", flush=True)


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.rstrip().splitlines())


def _port_or_free(port: int) -> int:
    """Kuma's default port if it is free on this machine, else any free port."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return free_port()
    return port


if __name__ == "__main__":
    sys.exit(main())
