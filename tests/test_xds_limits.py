"""ADS stream limits (issue 15, "xDS"): a client that floods requests and never reads responses
is cut off with a bounded queue, a message over the size limit is refused, and the number of
streams is capped. A raw gRPC client against the DP server (TLS front, ADS behind it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control_plane.config import XdsServerLimits
from control_plane.dp_server.bootstrap_api import BootstrapSettings, create_bootstrap_app
from control_plane.dp_server.server import DpServer
from control_plane.dp_server.tls import resolve_tls_files
from control_plane.store.base import mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.xds.component import XdsComponent
from control_plane.xds.names import CLUSTER_TYPE
from labkit.ports import free_port
from labkit.waiting import eventually
from tests.support.xds_control_plane import WEB, node

pytestmark = pytest.mark.timeout(60)

LIMITS = XdsServerLimits(max_streams=3, request_queue_size=8, send_timeout=1.0, first_request_timeout=1.0)


@dataclass
class Cp:
    port: int
    ca: Path
    xds: XdsComponent

    def channel(self) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        return grpc.aio.secure_channel(f"localhost:{self.port}", creds)


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[Cp]:
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    tls = resolve_tls_files(tmp_path, None, None)
    xds = XdsComponent(store, deregistration_delay_s=0.1, debounce_s=0.01, limits=LIMITS)
    port = free_port()
    app = create_bootstrap_app(store, BootstrapSettings(dp_server_port=port))
    server = DpServer(tls, port, app, xds.register, host="127.0.0.1", xds_limits=LIMITS)
    xds.ads.disconnect = server.disconnect
    tasks = [asyncio.create_task(server.run()), asyncio.create_task(xds.run())]
    await asyncio.wait_for(server.started.wait(), 10)
    try:
        yield Cp(port, tls.cert_file, xds)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _request(
    first: bool, names: list[str], metadata: dict[str, str] | None = None
) -> discovery_pb2.DiscoveryRequest:
    request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER_TYPE, resource_names=names)
    if first:
        request.node.CopyFrom(node(resource=WEB) if metadata is None else base_pb2.Node(id="default.big"))
        if metadata:
            request.node.metadata.update(metadata)
    return request


async def _flood(count: int) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
    """Requests that each deserve a response (the subscribed names change every time)."""
    for index in range(count):
        yield _request(index == 0, [f"name-{index % 2}"])


async def test_a_client_that_floods_and_never_reads_is_cut_off_with_a_bounded_queue(cp: Cp) -> None:
    async with cp.channel() as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources(_flood(200_000))
        await eventually(lambda: cp.xds.ads.streams == 1, 10, what="the stream opened")
        longest = 0

        def closed() -> bool:
            nonlocal longest
            longest = max(longest, cp.xds.ads.queued())
            return cp.xds.ads.streams == 0

        await eventually(closed, 30, what="the server closed the stream of a client that does not read")
        assert longest <= LIMITS.request_queue_size + 3
        # Its connection is closed: the client's call ends with a transport error (no status
        # could be sent behind the responses it never read).
        assert await asyncio.wait_for(call.code(), 10) not in (grpc.StatusCode.OK, None)
        assert cp.xds.ads.responses_sent[CLUSTER_TYPE] < 200_000


async def test_a_message_over_the_limit_is_refused(cp: Cp) -> None:
    big = {"padding": "x" * (LIMITS.max_receive_message_bytes + 1024)}

    async def one() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        yield _request(True, [], big)
        await asyncio.sleep(30)  # keep the stream open: the answer must be the refusal

    async with cp.channel() as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(one())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), 20)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (caught.value.details() or "")


async def test_streams_beyond_the_limit_are_refused(cp: Cp) -> None:
    async def idle() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        yield _request(True, [])
        await asyncio.sleep(60)

    async with cp.channel() as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        calls = [stub.StreamAggregatedResources(idle()) for _ in range(LIMITS.max_streams)]
        await eventually(lambda: cp.xds.ads.streams == LIMITS.max_streams, 10, what="streams opened")
        extra = stub.StreamAggregatedResources(idle())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(extra.read(), 10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "KUMA_XDS_SERVER_MAX_STREAMS" in (caught.value.details() or "")
        for call in calls:
            call.cancel()
    await eventually(lambda: cp.xds.ads.streams == 0, 10, what="the streams closed")


async def test_a_stream_without_a_first_request_is_not_kept(cp: Cp) -> None:
    async def nothing() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        await asyncio.sleep(60)
        yield _request(True, [])

    async with cp.channel() as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(nothing())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), 20)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cp.xds.ads.streams == 0
