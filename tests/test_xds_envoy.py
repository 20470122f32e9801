"""The ADS server with REAL Envoy: what a user sees (registration, listeners, traffic, endpoints
following the store, NACKs logged once, deregistration)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from control_plane.store.base import dataplane_key, mesh_key
from control_plane.xds.generate.pack import pack
from control_plane.xds.generate.snapshot import generate_snapshot
from control_plane.xds.names import LISTENER_TYPE
from labkit.ports import free_port
from labkit.waiting import eventually
from tests.support.xds_control_plane import (
    NODE,
    Envoy,
    app_server,
    control_plane,
    dataplane_doc,
    http_inbound,
    running_envoy,
    store_dataplane,
)

pytestmark = pytest.mark.timeout(60)


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
            config = pack(tcp_proxy_pb2.TcpProxy(cluster="nowhere"))
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
