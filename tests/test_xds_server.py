"""The ADS server with the store, the reconciler and the lifecycle, driven by a raw gRPC client for
the protocol's corners (ACK, NACK, stale nonces, rejections, shutdown)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc

from control_plane.store.base import dataplane_key
from control_plane.xds.client import StreamEnded
from control_plane.xds.component import StreamRejected
from control_plane.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE
from labkit.waiting import eventually
from tests.support.xds_control_plane import (
    NODE,
    WEB,
    ads_client,
    control_plane,
    dataplane_doc,
    node,
    silent,
    store_dataplane,
    tcp_inbound,
)

pytestmark = pytest.mark.timeout(60)


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
