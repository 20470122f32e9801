"""An open ADS stream ends when its token stops being valid (issue 15, "Identity"): revoked,
expired, or its signing key removed — through the real DP server, within a bound far above the
check interval used here (0.2 s; 10 s by default)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import jwt
import pytest
from envoy.config.core.v3 import base_pb2

from control_plane.dp_server.authn import DpAuthenticator
from control_plane.dp_server.stream_reverify import StreamReverifier
from control_plane.resources.dataplane import Dataplane
from control_plane.store.base import ResourceStore, mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.tokens import TokenRequest, issue_token, revoke
from control_plane.tokens.keys import remove_signing_key, rotate_signing_key
from control_plane.tokens.verify import VerifiedToken
from control_plane.xds.client import AdsClient
from control_plane.xds.names import CLUSTER_TYPE
from control_plane.xds.server import StreamRejected
from labkit.waiting import eventually
from tests.support.dp_server_harness import Cp, running_dp_server

INTERVAL_S = 0.2
BOUND_S = 10.0  # 50 intervals: far from normal behaviour, well under the 30 s required
WEB_1 = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "web-1",
    "networking": {"address": "127.0.0.1", "inbound": [{"port": 20001, "tags": {"kuma.io/service": "web"}}]},
}


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[Cp]:
    async with running_dp_server(tmp_path / "cp", reverify_interval_s=INTERVAL_S) as server:
        yield server


def _jti(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["jti"]


def _revoke(store: ResourceStore, token: str) -> None:
    revoke(store, "default", _jti(token))


def _remove_key(store: ResourceStore, token: str) -> None:
    rotate_signing_key(store, "default")  # a newer key stays: only this token's key goes
    assert remove_signing_key(store, "default", jwt.get_unverified_header(token)["kid"])


# (how the token is issued, what makes it invalid while the stream is open, the reason sent)
CASES: dict[str, tuple[Callable[[ResourceStore], str], Callable[[ResourceStore, str], None], str]] = {
    "revoked": (lambda s: issue_token(s, TokenRequest("default", "web-1")), _revoke, "revoked"),
    "signing key removed": (
        lambda s: issue_token(s, TokenRequest("default", "web-1")),
        _remove_key,
        "unknown key",
    ),
    # Valid for 4 s more (expired 1 s ago, 5 s leeway): it expires while the stream is open.
    "expired": (
        lambda s: issue_token(s, TokenRequest("default", "web-1", {}, 1), time.time() - 2),
        lambda s, t: None,
        "expired",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_open_stream_ends_when_its_token_is_no_longer_valid(cp: Cp, case: str) -> None:
    issue, invalidate, reason = CASES[case]
    token = issue(cp.store)
    node = base_pb2.Node(id="default.web-1", cluster="web")
    node.metadata.update({"dataplane.resource": json.dumps(WEB_1)})
    creds = grpc.ssl_channel_credentials(root_certificates=cp.ca.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{cp.port}", creds) as channel:
        client = AdsClient(channel, node, [("authorization", token)])
        try:
            client.send(CLUSTER_TYPE)
            first = await client.recv(5)  # the stream is open and serving
            client.ack(first)
            invalidate(cp.store, token)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while True:
                    await client.recv(BOUND_S)
            assert time.monotonic() - started < BOUND_S
        finally:
            await client.close()
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ended.value.details() == reason
    # The server's close hooks ran: the node is no longer connected.
    await eventually(lambda: cp.xds.connected_nodes() == [], what="node disconnected")


async def test_a_valid_token_keeps_its_stream(cp: Cp) -> None:
    token = issue_token(cp.store, TokenRequest("default", "web-1"))
    node = base_pb2.Node(id="default.web-1", cluster="web")
    node.metadata.update({"dataplane.resource": json.dumps(WEB_1)})
    creds = grpc.ssl_channel_credentials(root_certificates=cp.ca.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{cp.port}", creds) as channel:
        client = AdsClient(channel, node, [("authorization", token)])
        try:
            client.send(CLUSTER_TYPE)
            client.ack(await client.recv(5))
            with pytest.raises(TimeoutError):  # ~10 checks pass; the stream stays open
                await client.recv(10 * INTERVAL_S)
            assert cp.xds.connected_nodes() == ["default.web-1"]
        finally:
            await client.close()


class CountingAuthenticator(DpAuthenticator):
    """The real authenticator, counting the re-checks of open streams."""

    checks = 0

    def authenticate(self, token: str | None, dataplane: Dataplane, where: str) -> VerifiedToken | None:
        type(self).checks += 1
        return super().authenticate(token, dataplane, where)


async def test_only_streams_whose_verdict_may_have_changed_are_checked() -> None:
    store = MemoryStore()
    for mesh in ("default", "other"):
        store.upsert(mesh_key(mesh), {})
    authn = CountingAuthenticator(store, "dpToken")
    CountingAuthenticator.checks = 0
    reverifier = StreamReverifier(store, authn, interval_s=0.05, full_every=10_000)  # no full pass here
    tokens = {
        (mesh, name): issue_token(store, TokenRequest(mesh, name))
        for mesh in ("default", "other")
        for name in ("web-1", "web-2")
    }
    watchers = {
        key: asyncio.create_task(reverifier.watch(_node(*key), {"authorization": f"Bearer {token}"}))
        for key, token in tokens.items()
    }
    try:
        await asyncio.sleep(0.05 * 5)  # several intervals, nothing changed
        assert CountingAuthenticator.checks == 0
        revoke(store, "other", _jti(tokens[("other", "web-1")]))
        await eventually(lambda: watchers[("other", "web-1")].done(), timeout=5)
        with pytest.raises(StreamRejected):
            watchers[("other", "web-1")].result()
        assert CountingAuthenticator.checks == 2  # mesh "other"'s two streams, not "default"'s
        assert not any(task.done() for key, task in watchers.items() if key != ("other", "web-1"))
    finally:
        for task in watchers.values():
            task.cancel()
        await asyncio.gather(*watchers.values(), return_exceptions=True)


def _node(mesh: str, name: str) -> base_pb2.Node:
    node = base_pb2.Node(id=f"{mesh}.{name}", cluster=name)
    doc = {**WEB_1, "mesh": mesh, "name": name}
    node.metadata.update({"dataplane.resource": json.dumps(doc)})
    return node


async def test_every_stream_is_checked_again_on_the_full_pass() -> None:
    # A change event missed (e.g. a notification lost between instances) still heals.
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    authn = CountingAuthenticator(store, "dpToken")
    CountingAuthenticator.checks = 0
    reverifier = StreamReverifier(store, authn, interval_s=0.05, full_every=2)
    token = issue_token(store, TokenRequest("default", "web-1"))
    watcher = asyncio.create_task(
        reverifier.watch(_node("default", "web-1"), {"authorization": f"Bearer {token}"})
    )
    try:
        await eventually(lambda: CountingAuthenticator.checks >= 1, timeout=5)
        assert not watcher.done()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
