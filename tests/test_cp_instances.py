"""Several control-plane instances on one PostgreSQL database, as real processes: resources and
changes cross instances, one leader runs the singleton jobs and another takes over when it dies,
agents behind a TCP load balancer (Debian's haproxy) survive the loss of their instance, and a
PostgreSQL restart heals without restarting anything.

Why a load balancer rather than several addresses in the agent: Envoy's ADS cluster and the
agent's --cp-address name one endpoint each, as in Kuma; an instance dying must be invisible to
them, which is what a TCP balancer with health checks gives (the TLS is passed through, so the
agent still verifies the control plane's certificate, shared by the instances).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from labkit.lab import BIN, MTLS_MESH, AgentProc, ControlPlaneProc, Lab, dataplane
from labkit.ports import free_port
from labkit.waiting import wait_until
from tests.support.haproxy import start_haproxy
from tests.support.postgres import PostgresServer

DEREGISTRATION_DELAY = "1s"


@pytest.fixture
def pg(postgres: PostgresServer) -> PostgresServer:
    return postgres  # the session's server (tests/conftest.py); each cluster takes a new database


@dataclass
class Cluster:
    lab: Lab
    pg: PostgresServer
    db: str
    instances: list[ControlPlaneProc] = field(default_factory=list)
    lb_port: int = 0

    def front(
        self, through: ControlPlaneProc | None = None, api: ControlPlaneProc | None = None
    ) -> ControlPlaneProc:
        """What agents are given: the balancer (or one instance's DP server) and the shared CA;
        tokens come from `api` (the first instance by default)."""
        first = self.instances[0]
        dp_port = through.dp_port if through is not None else self.lb_port
        return ControlPlaneProc(first.proc, first.work_dir, (api or first).api_url, dp_port)

    def apply(self, cp: ControlPlaneProc, text: str) -> None:
        res = self.lab.kumactl(cp, "apply", "-f", "-", input=text)
        assert res.returncode == 0, res.stderr

    def leaders(self) -> list[ControlPlaneProc]:
        return [cp for cp in self.instances if cp.proc.popen.poll() is None and metric(cp, "leader") == 1.0]


def metric(cp: ControlPlaneProc, name: str) -> float:
    text = httpx.get(f"{cp.diagnostics_url}/metrics", timeout=2).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def start_cluster(lab: Lab, pg: PostgresServer, count: int = 2, balancer: bool = False) -> Cluster:
    db = pg.new_database()
    cluster = Cluster(lab, pg, db)
    env = {**pg.env(db), "KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY": DEREGISTRATION_DELAY}
    migrate = lab.spawn("migrate", [str(BIN / "kuma-cp"), "migrate", "up"], env, inherit_kuma=False)
    assert migrate.popen.wait(60) == 0, migrate.log_tail()
    dp_ports = [free_port() for _ in range(count)]
    if balancer:
        _, cluster.lb_port = start_haproxy(lab, dp_ports)
        env["KUMA_BOOTSTRAP_SERVER_PARAMS_XDS_PORT"] = str(cluster.lb_port)  # Envoy's ADS too
    for i, dp_port in enumerate(dp_ports):
        work_dir = lab.root / f"kuma-cp-{i}"
        shared_tls = {}
        if cluster.instances:  # one certificate for every instance: agents trust one CA
            first = cluster.instances[0].work_dir
            shared_tls = {
                "KUMA_GENERAL_TLS_CERT_FILE": str(first / "kuma-cp.crt"),
                "KUMA_GENERAL_TLS_KEY_FILE": str(first / "kuma-cp.key"),
            }
        cp = lab.start_control_plane(dp_port=dp_port, work_dir=work_dir, **env, **shared_tls)
        lab.wait_control_plane(cp)
        cluster.instances.append(cp)
    return cluster


def envoy_endpoints(agent: AgentProc, cluster_name: str) -> set[str]:
    with agent.envoy_admin() as admin:
        clusters = admin.get("/clusters", params={"format": "json"}).json()
    for status in clusters.get("cluster_statuses", []):
        if status["name"] == cluster_name:
            return {
                f"{h['address']['socket_address']['address']}:{h['address']['socket_address']['port_value']}"
                for h in status.get("host_statuses", [])
            }
    return set()


def workload_sans(agent: AgentProc) -> set[str]:
    with agent.envoy_admin() as admin:
        certs = admin.get("/certs").json()["certificates"]
    return {
        uri
        for cert in certs
        for chain in cert.get("cert_chain", [])
        for san in chain.get("subject_alt_names", [])
        if (uri := san.get("uri"))
    }


def test_resources_and_changes_cross_instances(lab: Lab, pg: PostgresServer) -> None:
    cluster = start_cluster(lab, pg)
    a, b = cluster.instances
    # A Mesh applied through one instance is served by the other.
    cluster.apply(a, "type: Mesh\nname: other\n")
    served = httpx.get(f"{b.api_url}/meshes/other", timeout=5)
    assert served.status_code == 200 and served.json()["name"] == "other"
    # A proxy on B receives an endpoint registered through A within 1 s.
    backend_app, outbound = free_port(), free_port()
    lab.start_app("backend", "backend-1", backend_app)
    web = lab.start_agent(
        cluster.front(through=b), dataplane("web-1", "web", free_port(), free_port(), {"backend": outbound})
    )
    lab.wait_ready(web)
    endpoint_port = free_port()
    doc = dataplane("backend-2", "backend", endpoint_port, backend_app)
    put = httpx.put(f"{a.api_url}/meshes/default/dataplanes/backend-2", json=doc, timeout=5)
    registered = time.monotonic()  # from A's answer: the endpoint is in the database
    assert put.status_code == 201, put.text
    wait_until(
        lambda: f"127.0.0.1:{endpoint_port}" in envoy_endpoints(web, "backend"), timeout=10, interval=0.02
    )
    assert time.monotonic() - registered <= 1.0
    # 50 concurrent applies spread over both instances: none lost.
    asyncio.run(_concurrent_applies([a.api_url, b.api_url], 50))
    for cp in (a, b):
        items = httpx.get(f"{cp.api_url}/meshes/default/meshtimeouts", params={"size": 200}, timeout=5).json()
        assert {i["name"] for i in items["items"]} >= {f"t-{n}" for n in range(50)}
    # A stale update through one instance after a change through the other: 409.
    read = httpx.get(f"{a.api_url}/meshes/default/meshtimeouts/t-1", timeout=5)
    doc = read.json()
    assert httpx.put(f"{b.api_url}/meshes/default/meshtimeouts/t-1", json=doc, timeout=5).status_code == 200
    stale = httpx.put(
        f"{a.api_url}/meshes/default/meshtimeouts/t-1",
        json=doc,
        headers={"If-Match": read.headers["etag"]},
        timeout=5,
    )
    assert stale.status_code == 409


async def _concurrent_applies(api_urls: list[str], count: int) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.put(
                    f"{api_urls[n % len(api_urls)]}/meshes/default/meshtimeouts/t-{n}",
                    json={
                        "type": "MeshTimeout",
                        "mesh": "default",
                        "name": f"t-{n}",
                        "spec": {
                            "targetRef": {"kind": "Mesh"},
                            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": f"{n + 1}s"}}],
                        },
                    },
                )
                for n in range(count)
            )
        )
    assert [r.status_code for r in responses] == [201] * count, [
        r.text for r in responses if r.status_code != 201
    ]


def test_the_leader_killed_another_takes_over_and_deregistration_goes_on(
    lab: Lab, pg: PostgresServer
) -> None:
    cluster = start_cluster(lab, pg)
    wait_until(lambda: len(cluster.leaders()) == 1, timeout=15)
    (leader,) = cluster.leaders()
    (follower,) = [cp for cp in cluster.instances if cp is not leader]
    assert metric(follower, "leader") == 0.0
    web = lab.start_agent(
        cluster.front(through=follower), dataplane("web-1", "web", free_port(), free_port())
    )
    lab.wait_ready(web)
    leader.proc.signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: metric(follower, "leader") == 1.0, timeout=15, interval=0.1)
    assert time.monotonic() - killed <= 5.0 + 1.0  # Kuma's lease (5 s) and our poll (1 s)
    # The new leader deregisters a proxy that goes away.
    assert web.proc.stop() == 0

    def registered() -> bool:
        return httpx.get(f"{follower.api_url}/meshes/default/dataplanes/web-1", timeout=2).status_code == 200

    wait_until(lambda: not registered(), timeout=20)


def test_killing_an_instance_under_traffic_fails_no_request(lab: Lab, pg: PostgresServer) -> None:
    cluster = start_cluster(lab, pg, balancer=True)
    front = cluster.front()
    cluster.apply(cluster.instances[0], MTLS_MESH)
    backend_app, outbound = free_port(), free_port()
    lab.start_app("backend", "backend-1", backend_app)
    backend = lab.start_agent(front, dataplane("backend-1", "backend", free_port(), backend_app))
    web = lab.start_agent(front, dataplane("web-1", "web", free_port(), free_port(), {"backend": outbound}))
    lab.wait_ready(backend)
    lab.wait_ready(web)
    url = f"http://127.0.0.1:{outbound}/"
    wait_until(lambda: httpx.get(url, timeout=2).status_code == 200, timeout=20)
    sans = workload_sans(web)
    assert "spiffe://default/web" in sans

    def connected(cp: ControlPlaneProc) -> float:
        return metric(cp, "xds_dataplanes_connected")

    wait_until(lambda: sum(connected(cp) for cp in cluster.instances) == 2, timeout=20)
    victim = max(cluster.instances, key=connected)
    (survivor,) = [cp for cp in cluster.instances if cp is not victim]
    outcome = Traffic(url)
    outcome.start()
    try:
        time.sleep(1.0)  # traffic flowing before the kill
        victim.proc.signal(signal.SIGKILL)
        # Its agents reconnect through the balancer to the survivor, meanwhile traffic flows.
        wait_until(lambda: connected(survivor) == 2, timeout=30, interval=0.2)
        # The survivor's config reaches them: a second backend instance, applied there.
        second_app = free_port()
        lab.start_app("backend", "backend-2", second_app)
        second = lab.start_agent(
            cluster.front(api=survivor), dataplane("backend-2", "backend", free_port(), second_app)
        )
        lab.wait_ready(second)
        wait_until(lambda: len(envoy_endpoints(web, "backend")) == 2, timeout=15)
        time.sleep(1.0)
    finally:
        outcome.stop()
    assert outcome.ok > 50 and outcome.failures == [], outcome.failures[:5]
    assert workload_sans(web) == sans  # the same identity after the move


class Traffic(threading.Thread):
    """Requests one after another until stopped; every failure kept."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._halt.is_set():
                try:
                    response = client.get(self.url)
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:100]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.02)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def test_postgres_restart_under_load_heals_without_restarts(lab: Lab, pg: PostgresServer) -> None:
    cluster = start_cluster(lab, pg)
    a, b = cluster.instances
    web = lab.start_agent(
        cluster.front(through=b),
        dataplane("web-1", "web", free_port(), free_port(), {"backend": free_port()}),
    )
    lab.wait_ready(web)
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        n = 0
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                name = f"w-{n}"
                doc = {"type": "Mesh", "name": name}
                try:
                    response = client.put(f"{(a, b)[n % 2].api_url}/meshes/{name}", json=doc)
                    if response.status_code in (200, 201):
                        acknowledged.append(name)
                        n += 1
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(acknowledged) >= 10, timeout=20)
        pg.restart()
        before = len(acknowledged)
        wait_until(lambda: len(acknowledged) >= before + 10, timeout=30)  # writes work again
    finally:
        stop.set()
        thread.join(10)
    # Nothing acknowledged is lost, on either instance; both still serve.
    for cp in (a, b):
        names = {
            m["name"]
            for m in httpx.get(f"{cp.api_url}/meshes", params={"size": 1000}, timeout=5).json()["items"]
        }
        assert set(acknowledged) <= names
        assert cp.proc.popen.poll() is None
    # Changes still cross instances (the listener reconnected): an endpoint applied through A
    # reaches the proxy on B.
    port = free_port()
    cluster.apply(a, yaml.safe_dump(dataplane("backend-9", "backend", port, free_port())))
    wait_until(lambda: f"127.0.0.1:{port}" in envoy_endpoints(web, "backend"), timeout=10, interval=0.05)
