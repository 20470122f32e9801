"""The ADS server with the store, the reconciler and the lifecycle: a raw gRPC client for the
protocol's corners, and REAL Envoy for what a user sees (listeners, endpoints, traffic, NACKs,
deregistration)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import any_pb2

from control_plane.resources.registry import parse_resource, to_document
from control_plane.store.base import dataplane_key, mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.xds.client import AdsClient, StreamEnded
from control_plane.xds.component import StreamRejected, XdsComponent
from control_plane.xds.generate import generate_snapshot
from control_plane.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)
NODE = "default.web-1"


def dataplane_doc(name: str, inbound: list[dict[str, Any]], outbound: list[dict[str, Any]] = ()) -> dict:
    networking = {"address": "127.0.0.1", "inbound": inbound, "outbound": list(outbound)}
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": networking}


def store_dataplane(store: MemoryStore, doc: dict[str, Any]) -> None:
    """What `kumactl apply` does."""
    spec = {k: v for k, v in to_document(parse_resource(doc)).items() if k not in ("type", "mesh", "name")}
    store.upsert(dataplane_key(doc["name"], doc["mesh"]), spec)


async def eventually(condition: Callable[[], Awaitable[Any] | Any], timeout: float = 5.0) -> Any:
    """Poll until `condition` is truthy; fail with its last value or error at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if asyncio.iscoroutine(last):
                last = await last
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - reported at the deadline
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s; last: {last!r}")


@dataclass
class ControlPlane:
    store: MemoryStore
    component: XdsComponent
    server: grpc.aio.Server
    port: int
    runner: asyncio.Task[None]


@contextlib.asynccontextmanager
async def control_plane(**options: Any) -> AsyncIterator[ControlPlane]:
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    component = XdsComponent(store, **options)
    server = grpc.aio.server()
    component.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    runner = asyncio.create_task(component.run())
    try:
        yield ControlPlane(store, component, server, port, runner)
    finally:
        runner.cancel()  # ends the streams first, so stop() need not wait for them
        await asyncio.gather(runner, return_exceptions=True)
        await server.stop(grace=1)


@contextlib.asynccontextmanager
async def ads_client(port: int, node: base_pb2.Node, metadata: tuple = ()) -> AsyncIterator[AdsClient]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = AdsClient(channel, node, metadata)
        try:
            yield client
        finally:
            await client.close()


async def silent(client: AdsClient, seconds: float = 0.3) -> bool:
    """No response within `seconds` (the only way to show that nothing is sent)."""
    with contextlib.suppress(TimeoutError):
        response = await client.recv(seconds)
        raise AssertionError(f"unexpected response {response.type_url} {response.version_info}")
    return True


def node(node_id: str = NODE, resource: dict[str, Any] | None = None) -> base_pb2.Node:
    result = base_pb2.Node(id=node_id, cluster="web")
    if resource is not None:
        result.metadata.update({"dataplane.resource": json.dumps(resource)})
    return result


def tcp_inbound(port: int, service: str) -> dict[str, Any]:
    return {"port": port, "tags": {"kuma.io/service": service}}


WEB = dataplane_doc(
    "web-1", [tcp_inbound(20001, "web")], [{"port": 30001, "tags": {"kuma.io/service": "backend"}}]
)


async def test_protocol_ack_stale_nonce_nack_and_content_versions(caplog: pytest.LogCaptureFixture) -> None:
    async with control_plane() as cp, ads_client(cp.port, node()) as client:
        store_dataplane(cp.store, WEB)
        store_dataplane(cp.store, dataplane_doc("backend-1", [tcp_inbound(20002, "backend")]))
        client.send(CLUSTER_TYPE)
        cds = await client.recv()
        assert cds.type_url == CLUSTER_TYPE and len(cds.resources) == 2
        client.send(LISTENER_TYPE)
        lds = await client.recv()
        assert {listener_pb2.Listener.FromString(r.value).name for r in lds.resources} == {
            "inbound:127.0.0.1:20001",
            "outbound:127.0.0.1:30001",
        }
        client.ack(cds)
        client.ack(lds)
        client.send(ENDPOINT_TYPE, names=["backend"])
        eds = await client.recv()
        assert eds.type_url == ENDPOINT_TYPE and len(eds.resources) == 1
        client.ack(eds, ["backend"])
        assert await silent(client)  # ACKs are answered by silence

        # Only what changed is pushed: a new backend endpoint changes EDS, not CDS or LDS.
        store_dataplane(cp.store, dataplane_doc("backend-2", [tcp_inbound(20003, "backend")]))
        eds2 = await client.recv()
        assert eds2.type_url == ENDPOINT_TYPE and eds2.version_info != eds.version_info
        client.ack(eds, ["backend"])  # its nonce is stale now
        assert await silent(client)

        # A NACK is logged once and the rejected version is not sent again.
        for _ in range(2):
            client.send(ENDPOINT_TYPE, eds.version_info, eds2.nonce, ["backend"], error="bad endpoint")
        assert await silent(client)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [f"Envoy {NODE} rejected EDS version {eds2.version_info}: bad endpoint"]
        assert cp.component.ads.responses_sent[ENDPOINT_TYPE] == 2

        # Asking for other names is answered even though the version did not change.
        client.send(ENDPOINT_TYPE, eds.version_info, eds2.nonce, ["backend", "other"])
        eds3 = await client.recv()
        assert eds3.version_info == eds2.version_info and len(eds3.resources) == 1


async def test_node_waits_for_its_dataplane_and_kumactl_dataplanes_stay() -> None:
    async with control_plane(deregistration_delay_s=0.1) as cp:
        async with ads_client(cp.port, node()) as client:
            client.send(CLUSTER_TYPE)
            assert await silent(client)  # no Dataplane in the store: nothing to send yet
            store_dataplane(cp.store, WEB)  # as `kumactl apply` does
            cds = await client.recv()
            assert cds.type_url == CLUSTER_TYPE
        await eventually(lambda: cp.component.connected_nodes() == [])
        await asyncio.sleep(0.3)  # past the delay: a Dataplane the proxy did not send is not its to delete
        assert cp.store.get(dataplane_key("web-1")) is not None


@pytest.mark.parametrize(
    ("resource", "node_id", "expected"),
    [
        (
            {**WEB, "networking": {**WEB["networking"], "inbound": [{"port": 0, "tags": {}}]}},
            NODE,
            "invalid dataplane.resource: networking.inbound[0].port",
        ),
        (WEB, "default.web-2", "do not match the node id 'default.web-2'"),
        ({**WEB, "mesh": "nope"}, "nope.web-1", "mesh 'nope' of the Dataplane does not exist"),
    ],
)
async def test_invalid_dataplane_in_metadata_rejects_the_stream(
    resource: dict, node_id: str, expected: str
) -> None:
    async with control_plane() as cp, ads_client(cp.port, node(node_id, resource)) as client:
        client.send(CLUSTER_TYPE)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.recv()
        assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
        assert expected in caught.value.details()
        assert cp.store.list("Dataplane")[1] == 0 and cp.component.connected_nodes() == []


async def test_authenticate_sees_the_token_and_can_refuse() -> None:
    seen: list[tuple[str, str | None]] = []

    async def authenticate(node: base_pb2.Node, metadata: dict[str, str]) -> None:
        seen.append((node.id, metadata.get("authorization")))
        if metadata.get("authorization") != "good":
            raise StreamRejected(grpc.StatusCode.UNAUTHENTICATED, "token is not valid")

    bad_token = (("authorization", "bad"),)
    async with (
        control_plane(authenticate=authenticate) as cp,
        ads_client(cp.port, node(resource=WEB), bad_token) as client,
    ):
        client.send(CLUSTER_TYPE)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.recv()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert caught.value.details() == "token is not valid"
        assert seen == [(NODE, "bad")] and cp.store.get(dataplane_key("web-1")) is None


async def test_delta_xds_is_unimplemented() -> None:
    async with control_plane() as cp, grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(iter(()))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_shutdown_ends_streams_cleanly_and_refuses_new_ones() -> None:
    async with control_plane() as cp:
        store_dataplane(cp.store, WEB)
        async with ads_client(cp.port, node()) as client:
            client.send(CLUSTER_TYPE)
            await client.recv()
            assert cp.component.connected_nodes() == [NODE]
            cp.runner.cancel()  # what the control plane does first on shutdown
            with pytest.raises(StreamEnded):
                await client.recv()
            assert cp.component.connected_nodes() == []  # the close hook ran
        async with ads_client(cp.port, node()) as late:
            late.send(CLUSTER_TYPE)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await late.recv()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# --- real Envoy -----------------------------------------------------------------------------------
BOOTSTRAP = """
node:
  id: {node_id}
  cluster: web
  metadata:
    dataplane.resource: {resource}
    dataplane.proxyType: dataplane
    workdir: {workdir}
    features: []
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: {{cluster_name: ads_cluster}}
      initial_metadata: [{{key: authorization, value: token-of-web-1}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: ads_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: ads_cluster
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ads_port}}}}}}}
"""


class Envoy:
    """A real Envoy whose bootstrap points ADS at our server, as kuma-dp's bootstrap does."""

    def __init__(self, binary: Path, workdir: Path, ads_port: int, resource: dict[str, Any]) -> None:
        admin_port = free_port()
        self.admin = f"http://127.0.0.1:{admin_port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "bootstrap.yaml"
        # JSON inside YAML: json.dumps twice gives a quoted string holding the Dataplane's JSON.
        resource_text = json.dumps(json.dumps(resource))
        config.write_text(
            BOOTSTRAP.format(
                node_id=NODE,
                resource=resource_text,
                workdir=workdir,
                admin_port=admin_port,
                ads_port=ads_port,
            )
        )
        self.log = workdir / "envoy.log"
        command = [
            str(binary),
            "--config-path",
            str(config),
            "--disable-hot-restart",
            "--log-level",
            "warning",
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def get(self, path: str) -> str:
        async with httpx.AsyncClient(base_url=self.admin, timeout=2, trust_env=False) as client:
            return (await client.get(path)).text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.asynccontextmanager
async def running_envoy(
    binary: Path, workdir: Path, ads_port: int, resource: dict[str, Any]
) -> AsyncIterator[Envoy]:
    envoy = Envoy(binary, workdir, ads_port, resource)
    try:
        yield envoy
    except BaseException:
        print(envoy.log.read_text(errors="replace")[-5000:])  # shown by pytest on failure
        raise
    finally:
        envoy.stop()


@contextlib.asynccontextmanager
async def app_server(body: bytes) -> AsyncIterator[int]:
    """A tiny HTTP/1.1 server standing in for the application behind an inbound."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def http_inbound(port: int, service_port: int, service: str = "web") -> dict[str, Any]:
    return {
        "port": port,
        "servicePort": service_port,
        "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"},
    }


async def test_envoy_registers_gets_listeners_routes_traffic_and_follows_endpoints(
    envoy_binary: Path, tmp_path: Path
) -> None:
    seen: list[tuple[str, str | None]] = []

    async def authenticate(node: base_pb2.Node, metadata: dict[str, str]) -> None:
        seen.append((node.id, metadata.get("authorization")))

    inbound_port, outbound_port = free_port(), free_port()
    async with app_server(b"hello from web-1") as app_port, control_plane(authenticate=authenticate) as cp:
        # web-1 calls `web` through its outbound, which lands on its own inbound, then on the app.
        web = dataplane_doc(
            "web-1",
            [http_inbound(inbound_port, app_port)],
            [{"port": outbound_port, "tags": {"kuma.io/service": "web"}}],
        )
        async with running_envoy(envoy_binary, tmp_path / "web-1", cp.port, web) as envoy:
            stored = await eventually(lambda: cp.store.get(dataplane_key("web-1")))
            assert stored.spec["networking"]["inbound"][0]["port"] == inbound_port
            assert seen == [(NODE, "token-of-web-1")]
            assert cp.component.connected_nodes() == [NODE]

            async def listeners() -> bool:
                text = await envoy.get("/listeners")
                return (
                    f"inbound:127.0.0.1:{inbound_port}" in text
                    and f"outbound:127.0.0.1:{outbound_port}" in text
                )

            await eventually(listeners)
            async with httpx.AsyncClient(trust_env=False, timeout=2) as client:

                async def call() -> str:
                    response = await client.get(f"http://127.0.0.1:{outbound_port}/hello")
                    return response.text if response.status_code == 200 else ""

                assert await eventually(call) == "hello from web-1"

            # A Dataplane applied to the store becomes an endpoint of `web` within 2 s, and goes away.
            other_port = free_port()
            store_dataplane(cp.store, dataplane_doc("web-2", [http_inbound(other_port, 1)]))
            endpoint = f"web::127.0.0.1:{other_port}::"

            async def has_endpoint() -> bool:
                return endpoint in await envoy.get("/clusters")

            await eventually(has_endpoint, timeout=2)
            cp.store.delete(dataplane_key("web-2"))
            await eventually(lambda: has_endpoint_gone(envoy, endpoint), timeout=2)


async def has_endpoint_gone(envoy: Envoy, endpoint: str) -> bool:
    text = await envoy.get("/clusters")
    return "web::" in text and endpoint not in text


def with_broken_listener(state: dict[str, bool]) -> Any:
    """The real generator plus, while `state["broken"]`, a listener Envoy refuses (no stat_prefix)."""

    def generator(dataplane: Any, mesh_dataplanes: Any, mesh: Any, **options: Any) -> Any:
        resources = generate_snapshot(dataplane, mesh_dataplanes, mesh, **options)
        if state["broken"]:
            config = any_pb2.Any()
            config.Pack(tcp_proxy_pb2.TcpProxy(cluster="nowhere"))
            chain = listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.tcp_proxy", typed_config=config
                    )
                ]
            )
            broken = listener_pb2.Listener(name="broken", filter_chains=[chain])
            broken.address.socket_address.address, broken.address.socket_address.port_value = (
                "127.0.0.1",
                free_port(),
            )
            resources[LISTENER_TYPE]["broken"] = broken
        return resources

    return generator


async def test_envoy_nack_is_logged_once_and_not_resent(
    envoy_binary: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = {"broken": True}
    async with control_plane(generator=with_broken_listener(state)) as cp:
        web = dataplane_doc("web-1", [http_inbound(free_port(), free_port())])
        async with running_envoy(envoy_binary, tmp_path / "web-1", cp.port, web) as envoy:

            def nacks() -> list[str]:
                return [r.getMessage() for r in caplog.records if "rejected LDS" in r.getMessage()]

            await eventually(nacks)
            assert "StatPrefix: value length must be at least 1" in nacks()[0]
            await asyncio.sleep(1.0)  # a resend loop would show within this second
            assert len(nacks()) == 1
            assert cp.component.ads.responses_sent[LISTENER_TYPE] == 1
            assert "listener_manager.lds.update_rejected: 1" in await envoy.get(
                "/stats?filter=lds.update_rejected"
            )

            # A fixed generator yields a new version: sent once more, and Envoy accepts it.
            state["broken"] = False
            cp.store.upsert(mesh_key("default"), {})

            async def accepted() -> bool:
                text = await envoy.get("/stats?filter=lds.update_success")
                return "listener_manager.lds.update_success: 1" in text

            await eventually(accepted)
            assert cp.component.ads.responses_sent[LISTENER_TYPE] == 2
            assert len(nacks()) == 1


async def test_disconnected_envoy_is_deregistered_after_the_delay(envoy_binary: Path, tmp_path: Path) -> None:
    async with control_plane(deregistration_delay_s=0.5) as cp:
        web = dataplane_doc("web-1", [http_inbound(free_port(), free_port())])
        async with running_envoy(envoy_binary, tmp_path / "first", cp.port, web) as envoy:
            await eventually(lambda: cp.component.connected_nodes() == [NODE])
            assert cp.store.get(dataplane_key("web-1")) is not None
        envoy.stop()
        closed = time.monotonic()
        await eventually(lambda: cp.store.get(dataplane_key("web-1")) is None, timeout=3)
        assert time.monotonic() - closed >= 0.4  # not before the delay
        assert cp.component.connected_nodes() == []


async def test_envoy_reconnecting_in_time_keeps_its_dataplane(envoy_binary: Path, tmp_path: Path) -> None:
    delay = 1.0  # a restarted Envoy reconnects in ~0.1 s
    async with control_plane(deregistration_delay_s=delay) as cp:
        web = dataplane_doc("web-1", [http_inbound(free_port(), free_port())])
        async with running_envoy(envoy_binary, tmp_path / "first", cp.port, web):
            await eventually(lambda: cp.component.connected_nodes() == [NODE])
        await eventually(lambda: cp.component.connected_nodes() == [])
        closed = time.monotonic()
        async with running_envoy(envoy_binary, tmp_path / "second", cp.port, web):
            await eventually(lambda: cp.component.connected_nodes() == [NODE])
            assert time.monotonic() - closed < delay
            await asyncio.sleep(delay + 0.5 - (time.monotonic() - closed))
            assert cp.store.get(dataplane_key("web-1")) is not None
        await eventually(lambda: cp.store.get(dataplane_key("web-1")) is None, timeout=delay + 1)
