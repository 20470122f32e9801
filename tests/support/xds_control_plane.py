"""An in-process xDS control plane for the xDS tests (store + XdsComponent on a gRPC port), a raw
ADS client, and REAL Envoys bootstrapped as kuma-dp would (node metadata `dataplane.resource` and
`workdir`, ADS over plaintext HTTP/2 to the test's server, kuma-dp's drain flags)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from envoy.config.core.v3 import base_pb2

from control_plane.policies.core.parts import ProxyInfo
from control_plane.policies.meshaccesslog.formats import source_metadata
from control_plane.resources.registry import parse_resource, to_document
from control_plane.store.base import dataplane_key, mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.xds.client import AdsClient
from control_plane.xds.component import XdsComponent
from kuma_common.dp_contract import ACCESS_LOG_METADATA_KEY
from labkit.ports import free_port

NODE = "default.web-1"


def dataplane_doc(name: str, inbound: list[dict[str, Any]], outbound: list[dict[str, Any]] = ()) -> dict:
    networking = {"address": "127.0.0.1", "inbound": inbound, "outbound": list(outbound)}
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": networking}


def store_dataplane(store: MemoryStore, doc: dict[str, Any]) -> None:
    """What `kumactl apply` does."""
    spec = {k: v for k, v in to_document(parse_resource(doc)).items() if k not in ("type", "mesh", "name")}
    store.upsert(dataplane_key(doc["name"], doc["mesh"]), spec)


@dataclass
class ControlPlane:
    store: MemoryStore
    component: XdsComponent
    server: grpc.aio.Server
    port: int
    runner: asyncio.Task[None]


@contextlib.asynccontextmanager
async def control_plane(address: str = "127.0.0.1:0", **options: Any) -> AsyncIterator[ControlPlane]:
    """The xDS server over a MemoryStore holding the default Mesh, on `address` (a free loopback port
    by default, or `unix:<path>`); `options` go to XdsComponent."""
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    component = XdsComponent(store, **options)
    server = grpc.aio.server()
    component.register(server)
    port = server.add_insecure_port(address)
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


def _access_log_source(resource: dict[str, Any]) -> dict[str, str]:
    """What our bootstrap server puts in the node metadata for outbound access logs."""
    proxy = ProxyInfo.of(parse_resource({"type": "Dataplane", "mesh": "default", **resource}), None)
    return source_metadata(proxy.address, proxy.service, proxy.zone)


def bootstrap_json(
    resource: dict[str, Any],
    workdir: Path,
    admin_address: dict[str, Any],
    ads_address: dict[str, Any],
    token: str | None = None,
    runtime: dict[str, Any] | None = None,
) -> str:
    """An Envoy bootstrap shaped like kuma-dp's, minus TLS: ADS to our server at `ads_address`
    (a socket_address or pipe), admin at `admin_address`; `runtime`: a static runtime layer
    (e.g. a tracer's flush settings). JSON, which is YAML."""
    ads_service: dict[str, Any] = {"envoy_grpc": {"cluster_name": "ads_cluster"}}
    if token is not None:
        ads_service["initial_metadata"] = [{"key": "authorization", "value": token}]
    services = [i["tags"]["kuma.io/service"] for i in resource["networking"].get("inbound", [])]
    ads_cluster = {
        "name": "ads_cluster",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "ads_cluster",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": ads_address}}]}],
        },
    }
    ads = {"ads": {}, "resource_api_version": "V3"}
    config = {
        "node": {
            "id": f"{resource.get('mesh', 'default')}.{resource['name']}",
            "cluster": services[0] if services else resource["name"],
            "metadata": {
                "dataplane.resource": json.dumps(resource),
                "dataplane.proxyType": "dataplane",
                "workdir": str(workdir),
                "features": [],
                ACCESS_LOG_METADATA_KEY: _access_log_source(resource),
            },
        },
        "admin": {"address": admin_address},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [ads_service],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {"clusters": [ads_cluster]},
    }
    if runtime:
        config["layered_runtime"] = {"layers": [{"name": "test", "static_layer": runtime}]}
    return json.dumps(config, indent=1)


def socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


class Envoy:
    """A real Envoy whose bootstrap points ADS at our server, as kuma-dp's bootstrap does."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        ads_port: int,
        resource: dict[str, Any],
        concurrency: int | None = None,  # worker threads; None: Envoy's default (one per core)
        runtime: dict[str, Any] | None = None,  # a static runtime layer
    ) -> None:
        self.admin_port = free_port()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "bootstrap.yaml"
        admin, ads = socket_address(self.admin_port), socket_address(ads_port)
        config.write_text(
            bootstrap_json(resource, workdir, admin, ads, token="token-of-web-1", runtime=runtime)
        )
        self.log = workdir / "envoy.log"
        # The drain flags kuma-dp passes (kuma_dp/envoy/process.py): on a listener update the old
        # filter chain's connections get `connection: close` at once, so a changed permission
        # applies from the next request instead of after the drain time.
        command = [
            str(binary), "--config-path", str(config), "--disable-hot-restart", "--log-level", "warning",
            "--drain-time-s", "30", "--drain-strategy", "immediate",
        ]  # fmt: skip
        if concurrency is not None:
            command += ["--concurrency", str(concurrency)]
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
async def app_server(body: bytes | Callable[[str], bytes]) -> AsyncIterator[int]:
    """A tiny HTTP/1.1 server standing in for the application behind an inbound; it answers every
    request with `body`, or with `body(request head)` when given a function."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            answer = body(head) if callable(body) else body
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(answer), answer)
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
