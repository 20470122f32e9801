"""Open ADS streams are checked again: a token revoked, expired or whose signing key was removed
ends its stream within one interval (`KUMA_XDS_TOKEN_REVERIFY_INTERVAL`, 10 s).

A stream's token is checked when it opens (authn.py); without this, a proxy connected before a
revocation kept its config and updates for as long as its connection lived. Each stream's watcher
(`watch`, the XdsComponent's `watch_stream` hook) registers the stream and waits; ONE task checks
every registered stream each interval, in one worker-thread call, and fails the watchers of those
whose token is refused now with StreamRejected(UNAUTHENTICATED, <reason class>): the ADS server ends
the stream with that status (control_plane/xds/stream_guard.py) and the proxy's reconnects are
refused at open, as are its bootstrap and certificate requests.

One task rather than a timer per stream: 1,000 timers made 2,000 worker-thread hops every interval,
and those that fired together (streams opened together) queued ahead of the xDS generation in the
small default thread pool, slowing config changes at 1,000 proxies by ~0.3-0.8 s. And only the
streams whose verdict may have changed are checked each interval: those of a mesh whose secrets
(signing keys, revocations) or Mesh changed, those whose stored Dataplane changed, those past
their token's expiry; every FULL_EVERY intervals all of them, in case a change event was missed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass

import grpc
import jwt
from envoy.config.core.v3 import base_pb2

from control_plane.dp_server.authn import DpAuthenticator, token_from_header
from control_plane.resources.dataplane import Dataplane
from control_plane.store.base import ChangeEvent, ResourceStore, dataplane_key
from control_plane.tokens.verify import TokenRejected
from control_plane.xds.lifecycle import metadata_dataplane
from control_plane.xds.names import InvalidNodeId, parse_node_id
from control_plane.xds.server import StreamRejected
from kuma_common.dp_contract import TOKEN_HEADER

log = logging.getLogger("kuma-cp.authn")

FULL_EVERY = 6  # intervals between checks of every stream (a missed change event heals)
# What a token's verdict depends on besides time: its mesh's signing keys and revocations
# (Secrets), the Mesh itself, and, for a proxy that sent no Dataplane, the stored Dataplane.
_MESH_STATE_TYPES = frozenset({"Secret", "Mesh"})


@dataclass
class _Watched:
    node: base_pb2.Node
    mesh: str
    token: str | None
    sent: Dataplane | None  # the Dataplane in the node's metadata (parsed once), if any
    verdict: asyncio.Future[None]
    checked: int  # the mesh's generation its token was last verified against
    expires: float  # the token's exp (checked again from then on)


class StreamReverifier:
    def __init__(
        self,
        store: ResourceStore,
        authenticator: DpAuthenticator,
        interval_s: float,
        full_every: int = FULL_EVERY,
    ) -> None:
        self._store = store
        self._authenticator = authenticator
        self.interval_s = interval_s
        self.full_every = full_every
        self._streams: dict[int, _Watched] = {}
        self._checker: asyncio.Task[None] | None = None
        self._lock = threading.Lock()  # change events come from store threads
        self._generations: dict[str, int] = {}
        self._changed_dataplanes: set[str] = set()  # node ids
        self._subscribed = False

    async def watch(self, node: base_pb2.Node, metadata: dict[str, str]) -> None:
        """Until cancelled (the stream ended), or raise StreamRejected when the token fails."""
        if not self._subscribed:
            self._store.subscribe(self._on_change)
            self._subscribed = True
        token = token_from_header(metadata.get(TOKEN_HEADER))
        mesh = _mesh_of(node.id)
        with self._lock:
            generation = self._generations.get(mesh, 0)
        watched = _Watched(
            node,
            mesh,
            token,
            metadata_dataplane(node),
            asyncio.get_running_loop().create_future(),
            checked=generation,  # verified at open, just before this
            expires=_expiry(token),
        )
        self._streams[id(watched)] = watched
        if self._checker is None or self._checker.done():
            self._checker = asyncio.create_task(self._check_every_interval(), name="token-reverify")
        try:
            await watched.verdict
        finally:
            self._streams.pop(id(watched), None)

    def _on_change(self, event: ChangeEvent) -> None:  # any thread
        key = event.key
        with self._lock:
            if key.type in _MESH_STATE_TYPES:
                mesh = key.mesh or key.name
                self._generations[mesh] = self._generations.get(mesh, 0) + 1
            elif key.type == "Dataplane":
                self._changed_dataplanes.add(f"{key.mesh}.{key.name}")

    async def _check_every_interval(self) -> None:
        """Runs while streams are watched (started again by the next watch)."""
        tick = 0
        while self._streams:
            await asyncio.sleep(self.interval_s)
            tick += 1
            due = self._due(full=tick % self.full_every == 0)
            if not due:
                continue
            refused = await asyncio.to_thread(self._refused, due)
            for item, reason in refused:
                if not item.verdict.done():
                    log.warning("ending the ADS stream of %s: token refused now (%s)", item.node.id, reason)
                    item.verdict.set_exception(StreamRejected(grpc.StatusCode.UNAUTHENTICATED, reason))

    def _due(self, full: bool) -> list[_Watched]:
        """The streams to check now; each marked as checked against its mesh's current state."""
        now = time.time()
        with self._lock:
            changed, self._changed_dataplanes = self._changed_dataplanes, set()
            generations = dict(self._generations)
        due = []
        for item in self._streams.values():
            generation = generations.get(item.mesh, 0)
            stale = item.checked != generation or (item.sent is None and item.node.id in changed)
            if full or stale or now >= item.expires:
                item.checked = generation
                due.append(item)
        return due

    def _refused(self, watched: list[_Watched]) -> list[tuple[_Watched, str]]:
        """(stream, reason) for each stream whose token fails now (in a worker thread)."""
        refused = []
        for item in watched:
            try:
                dataplane = item.sent or self._stored(item.node)
                if dataplane is None:  # a stored Dataplane deleted meanwhile: nothing to check against
                    continue
                self._authenticator.authenticate(item.token, dataplane, "open ADS stream")
            except TokenRejected as exc:
                refused.append((item, exc.reason))
            except Exception as exc:  # the store away: keep the stream, check again next time
                log.warning("could not re-check the token of %s: %s", item.node.id, exc)
        return refused

    def _stored(self, node: base_pb2.Node) -> Dataplane | None:
        """The stored Dataplane the token was checked against when the stream opened."""
        try:
            mesh, name = parse_node_id(node.id)
        except InvalidNodeId:
            return None
        stored = self._store.get(dataplane_key(name, mesh))
        return None if stored is None else Dataplane.model_validate(stored.document())


def _mesh_of(node_id: str) -> str:
    try:
        return parse_node_id(node_id)[0]
    except InvalidNodeId:
        return ""


def _expiry(token: str | None) -> float:
    """The token's exp claim (read unverified: it was verified at open), or never."""
    if not token:
        return math.inf
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return 0.0  # check it at the next interval
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else 0.0
