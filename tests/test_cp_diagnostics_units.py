"""The diagnostics pieces alone: the label helpers, the request timer on the real API app, the
metered store, ACK/NACK counting in the ADS stream, the server's /ready switch (a real server on a
real socket), the configuration key, and one registry per control plane."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from pathlib import Path

import httpx
import prometheus_client
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client.parser import text_string_to_metric_families

from control_plane.api.app import create_app
from control_plane.config import ConfigError, load_config
from control_plane.diagnostics.http_metrics import instrumented, method_label, route_template, status_class
from control_plane.diagnostics.metrics import CpMetrics
from control_plane.diagnostics.server import DiagnosticsServer
from control_plane.runtime import ControlPlane, RuntimeStartError
from control_plane.store.base import ConflictError, ResourceKey
from control_plane.store.memory import MemoryStore
from control_plane.store.metered import MeteredStore
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.names import CLUSTER_TYPE, LISTENER_TYPE
from control_plane.xds.server import _Stream
from labkit.ports import free_port
from labkit.waiting import eventually

pytestmark = pytest.mark.timeout(30)


def value(metrics: CpMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# --- label helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "label"), [(200, "2xx"), (204, "2xx"), (301, "3xx"), (404, "4xx"), (503, "5xx"), (0, "5xx")]
)
def test_status_class(status: int, label: str) -> None:
    assert status_class(status) == label


def test_method_label_keeps_http_methods_only() -> None:
    assert [method_label(m) for m in ("GET", "PUT", "DELETE", "BREW", "get")] == [
        "GET",
        "PUT",
        "DELETE",
        "other",
        "other",
    ]


def test_route_template_names_the_route_never_the_path() -> None:
    routes = create_app(MemoryStore()).routes

    def template(method: str, path: str) -> str:
        return route_template(routes, {"type": "http", "method": method, "path": path, "root_path": ""})

    assert template("GET", "/meshes/default/dataplanes/web-1") == "/meshes/{mesh}/dataplanes/{name}"
    assert template("PUT", "/meshes/prod") == "/meshes/{name}"
    assert template("POST", "/meshes") == "/meshes"  # a 405 is still that route's
    assert template("GET", "/secret-name/whatever") == "other"


# --- the request timer on the real API app ---------------------------------------------------


async def test_api_requests_are_timed_by_route_and_status_class() -> None:
    metrics = CpMetrics()
    app = instrumented(create_app(MemoryStore()), metrics.api_server_http_request_duration_seconds)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost:5681") as client:
        assert (await client.put("/meshes/prod", json={"type": "Mesh", "name": "prod"})).status_code == 201
        assert (await client.get("/meshes/prod")).status_code == 200
        assert (await client.get("/meshes/nope/dataplanes/web-1")).status_code == 404
        assert (await client.get("/no/such/path")).status_code == 404
    name = "api_server_http_request_duration_seconds_count"
    assert value(metrics, name, code="2xx", handler="/meshes/{name}", method="PUT") == 1
    assert value(metrics, name, code="2xx", handler="/meshes/{name}", method="GET") == 1
    assert value(metrics, name, code="4xx", handler="/meshes/{mesh}/dataplanes/{name}", method="GET") == 1
    assert value(metrics, name, code="4xx", handler="other", method="GET") == 1


# --- the metered store -----------------------------------------------------------------------


def test_metered_store_times_each_operation_and_counts_conflicts() -> None:
    metrics = CpMetrics()
    store = MeteredStore(MemoryStore(), metrics)
    events: list[str] = []
    store.subscribe(lambda event: events.append(event.op))
    key = ResourceKey("MeshTimeout", "default", "t")
    stored, created = store.upsert(key, {"spec": {}})
    assert created
    store.upsert(key, {"spec": {"a": 1}}, expected_version=stored.version)
    with pytest.raises(ConflictError):
        store.upsert(key, {"spec": {}}, expected_version=stored.version)  # stale
    assert store.get(key) is not None
    store.list("MeshTimeout", mesh="default")
    assert store.delete(key)
    assert events == ["upsert", "upsert", "delete"]  # the wrapped store's listeners
    counts = {
        op: value(metrics, "store_count", operation=op, resource_type="MeshTimeout")
        for op in ("create", "update", "get", "list", "delete")
    }
    assert counts == {"create": 1, "update": 2, "get": 1, "list": 1, "delete": 1}
    assert value(metrics, "store_conflicts_total", resource_type="MeshTimeout") == 1


# --- ACK and NACK in the ADS stream ----------------------------------------------------------


def test_stream_counts_acks_and_nacks_not_initial_requests() -> None:
    metrics = CpMetrics()
    stream = _Stream("default.web-1", SnapshotCache(), Counter(), metrics)
    stream.on_request(discovery_pb2.DiscoveryRequest(type_url=LISTENER_TYPE))  # initial: neither
    stream.on_request(discovery_pb2.DiscoveryRequest(type_url=LISTENER_TYPE, version_info="v1"))
    nack = discovery_pb2.DiscoveryRequest(type_url=CLUSTER_TYPE, version_info="v1", response_nonce="1")
    nack.error_detail.message = "bad cluster"
    stream.on_request(nack)
    name = "xds_requests_received_total"
    assert value(metrics, name, type_url=LISTENER_TYPE, confirmation="ACK", error_type="no_error") == 1
    assert value(metrics, name, type_url=CLUSTER_TYPE, confirmation="NACK", error_type="other") == 1
    assert value(metrics, name, type_url=CLUSTER_TYPE, confirmation="ACK", error_type="no_error") == 0


# --- the server ------------------------------------------------------------------------------


async def test_ready_is_503_until_ready_and_healthy_always_200() -> None:
    metrics = CpMetrics()
    metrics.cert_generation.labels("default").inc()
    ready = False
    port = free_port()
    server = DiagnosticsServer(metrics.registry, lambda: ready, port, host="127.0.0.1")
    task = asyncio.create_task(server.run())
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            await eventually(lambda: server.started, timeout=10)
            assert (await client.get("/ready")).status_code == 503
            assert (await client.get("/healthy")).status_code == 200
            ready = True
            assert (await client.get("/ready")).status_code == 200
            text = (await client.get("/metrics")).text
    finally:
        server.stop()
        await asyncio.wait_for(task, 10)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("cert_generation_total", (("mesh", "default"),))] == 1


def test_each_control_plane_counts_into_its_own_registry() -> None:
    first, second = CpMetrics(), CpMetrics()
    first.xds_responses_sent.labels(LISTENER_TYPE).inc()
    assert value(first, "xds_responses_sent_total", type_url=LISTENER_TYPE) == 1
    assert value(second, "xds_responses_sent_total", type_url=LISTENER_TYPE) == 0
    assert (
        prometheus_client.REGISTRY.get_sample_value("xds_responses_sent_total", {"type_url": LISTENER_TYPE})
        is None
    )


# --- configuration ---------------------------------------------------------------------------


def test_diagnostics_port_from_default_file_and_env(tmp_path: Path) -> None:
    assert load_config(None, env={}).diagnostics.server_port == 5680
    path = tmp_path / "kuma-cp.yaml"
    path.write_text("diagnostics:\n  serverPort: 15680\n  debugEndpoints: false\n")
    config = load_config(str(path), env={})
    assert config.diagnostics.server_port == 15680
    assert "diagnostics.debugEndpoints" in config.ignored_keys  # Kuma's, not ours: accepted, listed
    assert (
        load_config(str(path), env={"KUMA_DIAGNOSTICS_SERVER_PORT": "25680"}).diagnostics.server_port == 25680
    )
    with pytest.raises(ConfigError, match="KUMA_DIAGNOSTICS_SERVER_PORT: 'x' is not a port"):
        load_config(None, env={"KUMA_DIAGNOSTICS_SERVER_PORT": "x"})


def test_a_busy_diagnostics_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        env = {
            "KUMA_GENERAL_WORK_DIR": str(tmp_path),
            "KUMA_STORE_TYPE": "memory",
            "KUMA_API_SERVER_HTTP_PORT": str(free_port()),
            "KUMA_DP_SERVER_PORT": str(free_port()),
            "KUMA_DIAGNOSTICS_SERVER_PORT": str(busy.getsockname()[1]),
        }
        with pytest.raises(RuntimeStartError, match="KUMA_DIAGNOSTICS_SERVER_PORT"):
            ControlPlane.open(load_config(None, env=env))


def test_two_servers_given_one_port_are_named_before_anything_starts(tmp_path: Path) -> None:
    # Each probe alone passes (nothing listens yet); before this check the second server then
    # failed to bind after the first was up, and a lab saw "ready" and then a dead control plane.
    port = str(free_port())
    env = {
        "KUMA_GENERAL_WORK_DIR": str(tmp_path),
        "KUMA_STORE_TYPE": "memory",
        "KUMA_API_SERVER_HTTP_PORT": str(free_port()),
        "KUMA_DP_SERVER_PORT": port,
        "KUMA_DIAGNOSTICS_SERVER_PORT": port,
    }
    with pytest.raises(
        RuntimeStartError, match=f"KUMA_DP_SERVER_PORT and KUMA_DIAGNOSTICS_SERVER_PORT are both {port}"
    ):
        ControlPlane.open(load_config(None, env=env))


def test_free_ports_are_not_handed_out_twice() -> None:
    picks = [free_port() for _ in range(300)]
    assert len(set(picks)) == len(picks)
