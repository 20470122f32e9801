"""Open ADS streams are checked again: a token revoked, expired or whose signing key was removed
ends its stream within one interval (`KUMA_XDS_TOKEN_REVERIFY_INTERVAL`, 10 s).

A stream's token is checked when it opens (authn.py); without this, a proxy connected before a
revocation kept its config and updates for as long as its connection lived. Each stream gets one
watcher (`watch`, the XdsComponent's `watch_stream` hook) that sleeps, re-verifies the same token
against the same Dataplane, and raises StreamRejected(UNAUTHENTICATED, <reason class>) on failure:
the ADS server ends the stream with that status (control_plane/xds/stream_guard.py) and the
proxy's reconnects are refused at open, as are its bootstrap and certificate requests.
"""

from __future__ import annotations

import asyncio
import logging
import random

import grpc
from envoy.config.core.v3 import base_pb2

from control_plane.dp_server.authn import DpAuthenticator, token_from_header
from control_plane.resources.dataplane import Dataplane
from control_plane.store.base import ResourceStore, dataplane_key
from control_plane.tokens.verify import TokenRejected
from control_plane.xds.lifecycle import metadata_dataplane
from control_plane.xds.names import InvalidNodeId, parse_node_id
from control_plane.xds.server import StreamRejected
from kuma_common.dp_contract import TOKEN_HEADER

log = logging.getLogger("kuma-cp.authn")


class StreamReverifier:
    def __init__(self, store: ResourceStore, authenticator: DpAuthenticator, interval_s: float) -> None:
        self._store = store
        self._authenticator = authenticator
        self.interval_s = interval_s

    async def watch(self, node: base_pb2.Node, metadata: dict[str, str]) -> None:
        """Until cancelled (the stream ended), or raise StreamRejected when the token fails."""
        token = token_from_header(metadata.get(TOKEN_HEADER))
        # A random first delay spreads the checks of streams that opened together.
        await asyncio.sleep(random.uniform(0.5, 1.0) * self.interval_s)
        while True:
            await self._check(node, token)
            await asyncio.sleep(self.interval_s)

    async def _check(self, node: base_pb2.Node, token: str | None) -> None:
        dataplane = await asyncio.to_thread(self._dataplane, node)
        if dataplane is None:  # a stored Dataplane deleted meanwhile: nothing to check against
            return
        try:
            await asyncio.to_thread(self._authenticator.authenticate, token, dataplane, "open ADS stream")
        except TokenRejected as exc:
            log.warning("ending the ADS stream of %s: its token is refused now (%s)", node.id, exc.reason)
            raise StreamRejected(grpc.StatusCode.UNAUTHENTICATED, exc.reason) from None

    def _dataplane(self, node: base_pb2.Node) -> Dataplane | None:
        """The Dataplane the token was checked against when the stream opened."""
        sent = metadata_dataplane(node)
        if sent is not None:
            return sent
        try:
            mesh, name = parse_node_id(node.id)
        except InvalidNodeId:
            return None
        stored = self._store.get(dataplane_key(name, mesh))
        return None if stored is None else Dataplane.model_validate(stored.document())
