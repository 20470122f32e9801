"""Mesh in a box, end to end: real kuma-cp, real kuma-dp agents, real Envoy, real apps on loopback."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from labkit.lab import AgentProc, ControlPlaneProc, Lab, dataplane
from labkit.ports import free_port, port_open
from labkit.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


class Mesh:
    """web-1 (with an outbound to backend) and backend-1, each with its app and agent."""

    def __init__(self, lab: Lab, cp: ControlPlaneProc) -> None:
        self.lab, self.cp = lab, cp
        self.web_in, self.web_out = free_port(), free_port()
        backend_app, self.backend_in = free_port(), free_port()
        web_app = free_port()
        lab.start_app("backend", "backend-1", backend_app)
        lab.start_app("web", "web-1", web_app, backend_url=f"http://127.0.0.1:{self.web_out}")
        self.backend = lab.start_agent(cp, dataplane("backend-1", "backend", self.backend_in, backend_app))
        self.web = lab.start_agent(
            cp, dataplane("web-1", "web", self.web_in, web_app, outbounds={"backend": self.web_out})
        )
        lab.wait_ready(self.backend)
        lab.wait_ready(self.web)

    def call(self, path: str = "/", timeout: float = 5) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.web_in}{path}", timeout=timeout)

    def add_backend(self, name: str) -> AgentProc:
        app_port, in_port = free_port(), free_port()
        self.lab.start_app("backend", name, app_port)
        agent = self.lab.start_agent(self.cp, dataplane(name, "backend", in_port, app_port))
        self.lab.wait_ready(agent)
        return agent


@pytest.fixture
def mesh(lab: Lab, cp: ControlPlaneProc) -> Mesh:
    return Mesh(lab, cp)


def _instances(mesh: Mesh, n: int) -> Counter[str]:
    return Counter(mesh.call(f"/n/{i}").json()["backend"]["instance"] for i in range(n))


def test_request_crosses_both_envoys(mesh: Mesh) -> None:
    resp = mesh.call("/hello")
    assert resp.status_code == 200
    body = resp.json()
    assert body["service"] == "web"
    assert body["backend"] == {"service": "backend", "instance": "backend-1", "path": "/hello"}
    # Both Envoys carried it: web's inbound and outbound, backend's inbound.
    web_stats, backend_stats = mesh.web.envoy_stats(), mesh.backend.envoy_stats()
    assert web_stats.get("cluster.backend.upstream_rq_completed", 0) >= 1
    assert any(
        k.startswith("cluster.localhost_") and k.endswith("upstream_rq_completed") and v
        for k, v in backend_stats.items()
    ) or any(
        k.startswith("cluster.localhost:") and k.endswith("upstream_rq_completed") and v
        for k, v in backend_stats.items()
    )


def test_backend_instance_added_live_then_removed(mesh: Mesh) -> None:
    second = mesh.add_backend("backend-2")
    added = time.monotonic()
    wait_until(lambda: "backend-2" in _instances(mesh, 6), timeout=2.0 + 1.0, interval=0.05)
    assert time.monotonic() - added <= 2.5  # within 2 s of the agent being READY (+ polling slack)
    # Stop its agent: calls never reach it again (until its Dataplane is deregistered, the mesh's
    # default MeshRetry sends a call that fails to connect to the other instance), and after the
    # deregistration delay its Dataplane and endpoint are gone.
    assert second.proc.stop() == 0
    assert set(_instances(mesh, 10)) == {"backend-1"}

    def listed() -> str:
        return mesh.lab.kumactl(mesh.cp, "get", "dataplanes", "-o", "json").stdout

    wait_until(lambda: "backend-2" not in listed(), timeout=20)
    assert set(_instances(mesh, 10)) == {"backend-1"}


def test_agent_waits_for_control_plane_then_ready_within_5s(lab: Lab) -> None:
    api, dp = free_port(), free_port()
    app = free_port()
    lab.start_app("backend", "backend-1", app)
    # Start the CP once to create its certificate, stop it, then start the agent first.
    cp = lab.start_control_plane(api, dp)
    lab.wait_control_plane(cp)
    token = lab.dataplane_token(cp, "backend-1")
    cp.proc.stop()
    agent = lab.start_agent(cp, dataplane("backend-1", "backend", free_port(), app), token_file=token)
    time.sleep(1.5)  # the agent is now retrying against a closed port
    assert agent.proc.popen.poll() is None
    restarted = lab.start_control_plane(api, dp, work_dir=cp.work_dir)
    lab.wait_control_plane(restarted)
    up = time.monotonic()
    lab.wait_ready(agent, timeout=10)
    assert time.monotonic() - up <= 5.0


def test_control_plane_restart_loses_no_request_and_resyncs(mesh: Mesh, lab: Lab) -> None:
    failures: list[str] = []
    done = threading.Event()
    count = 0

    def traffic() -> None:
        nonlocal count
        while not done.is_set():
            try:
                resp = mesh.call()
                if resp.status_code != 200:
                    failures.append(f"{resp.status_code} {resp.text}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            count += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        mesh.cp.proc.stop()
        time.sleep(1.0)
        new_cp = lab.start_control_plane(
            int(mesh.cp.api_url.rsplit(":", 1)[1]), mesh.cp.dp_port, work_dir=mesh.cp.work_dir
        )
        lab.wait_control_plane(new_cp)
        mesh.cp = new_cp
        # Resynced: a backend added after the restart reaches web's Envoy.
        mesh.add_backend("backend-3")
        wait_until(lambda: "backend-3" in _instances(mesh, 6), timeout=5)
    finally:
        done.set()
        worker.join()
    assert count > 20
    assert failures == []


def test_envoy_killed_is_restarted_and_traffic_resumes(mesh: Mesh) -> None:
    import psutil

    agent = psutil.Process(mesh.backend.proc.popen.pid)
    envoy = next(c for c in agent.children(recursive=True) if "envoy" in c.name())
    envoy.send_signal(signal.SIGKILL)
    wait_until(
        lambda: any(c.pid != envoy.pid and "envoy" in c.name() for c in agent.children(recursive=True)),
        timeout=10,
    )
    wait_until(lambda: mesh.call().status_code == 200, timeout=15)
    assert mesh.backend.proc.popen.poll() is None
    assert "restart" in mesh.backend.proc.log.read_text().lower()


def test_sigterm_lets_a_slow_request_finish_and_refuses_new_connections(mesh: Mesh) -> None:
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            result["resp"] = httpx.get(f"http://127.0.0.1:{mesh.backend_in}/sleep/2", timeout=10)
        except httpx.HTTPError as exc:
            result["error"] = exc

    caller = threading.Thread(target=slow)
    caller.start()
    time.sleep(0.5)  # the request is in flight inside backend's Envoy
    mesh.backend.proc.signal(signal.SIGTERM)
    wait_until(lambda: not port_open(mesh.backend_in), timeout=3)
    caller.join(10)
    resp = result.get("resp")
    assert isinstance(resp, httpx.Response), result
    assert resp.status_code == 200 and resp.json()["path"] == "/sleep/2"
    assert mesh.backend.proc.popen.wait(15) == 0


def test_resources_survive_restart_and_concurrent_applies_lose_none(lab: Lab, cp: ControlPlaneProc) -> None:
    docs = [
        {
            "type": "Dataplane",
            "mesh": "default",
            "name": f"dp-{i}",
            "networking": {
                "address": f"10.0.0.{i}",
                "inbound": [{"port": 8080, "tags": {"kuma.io/service": f"svc-{i}"}}],
            },
        }
        for i in range(1, 51)
    ]
    lab.kumactl(cp, "get", "meshes")  # writes the kumactl config once, before the parallel runs

    # All 50 writes at once: most straight to the API (the server's concurrency is what is tested;
    # 50 CLI interpreters starting together on two shared cores only test the machine), a few
    # through kumactl as a user would.
    def apply(doc: dict) -> str | None:
        if int(doc["name"].removeprefix("dp-")) % 5 == 0:
            res = lab.kumactl(cp, "apply", "-f", "-", input=yaml.safe_dump(doc))
            return None if res.returncode == 0 else f"kumactl: {res.stderr}"
        url = f"{cp.api_url}/meshes/default/dataplanes/{doc['name']}"
        res = httpx.put(url, json=doc, timeout=60)
        return None if res.is_success else f"PUT {doc['name']}: {res.status_code} {res.text}"

    with ThreadPoolExecutor(max_workers=len(docs)) as pool:
        errors = [e for e in pool.map(apply, docs) if e is not None]  # a raised error fails here too
    assert errors == []
    cp.proc.stop()
    again = lab.start_control_plane(int(cp.api_url.rsplit(":", 1)[1]), cp.dp_port, work_dir=cp.work_dir)
    lab.wait_control_plane(again)
    listed = httpx.get(f"{again.api_url}/meshes/default/dataplanes", params={"size": 1000}).json()
    assert listed["total"] == 50
    assert {item["name"] for item in listed["items"]} == {f"dp-{i}" for i in range(1, 51)}
