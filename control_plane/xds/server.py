"""The ADS server (state of the world, v3): streams, versions, nonces, ACK/NACK. Nothing of meshes.

Per stream and per type URL it remembers what it last sent (version, nonce), which names Envoy
asked for and what Envoy has accepted. It answers a request that shows Envoy lacks the current
snapshot, and pushes (clusters, then endpoints, then listeners) when the node's snapshot changes.
A rejected version (NACK) is logged once and not sent again until the snapshot changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control_plane.config import XdsServerLimits
from control_plane.diagnostics.metrics import CpMetrics
from control_plane.xds.cache import Packed, SnapshotCache, TypeSnapshot
from control_plane.xds.names import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    NAMED_TYPES,
    PUSH_ORDER,
    ROUTE_TYPE,
    SERVED_TYPES,
    short_type,
)
from control_plane.xds.stream_guard import StreamGuard

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_SNAPSHOT_CHANGED = object()
_END = object()


class StreamRejected(Exception):
    """Raised by a hook to refuse a stream with a gRPC status and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StreamHooks(Protocol):
    async def on_stream_open(self, node: base_pb2.Node, metadata: dict[str, str]) -> None: ...

    async def on_stream_close(self, node: base_pb2.Node) -> None: ...

    def watch_stream(self, node: base_pb2.Node, metadata: dict[str, str]) -> Awaitable[None] | None:
        """None, or what raises StreamRejected when an open stream must end (stream_guard.py)."""
        ...


class NoHooks:
    async def on_stream_open(self, node: base_pb2.Node, metadata: dict[str, str]) -> None:
        return None

    def watch_stream(self, node: base_pb2.Node, metadata: dict[str, str]) -> Awaitable[None] | None:
        return None

    async def on_stream_close(self, node: base_pb2.Node) -> None:
        return None


@dataclass(frozen=True)
class EncodedResponse:
    """A DiscoveryResponse whose resources are already encoded: `SerializeToString()` gives the
    very bytes `DiscoveryResponse(...).SerializeToString()` would (fields in number order), but
    joins the resources' shared encodings instead of copying each into a new message."""

    version_info: str
    type_url: str
    nonce: str
    entries: list[Packed]

    @property
    def resources(self) -> list[Any]:
        return [entry.packed for entry in self.entries]

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf name gRPC's serializer calls
        head = discovery_pb2.DiscoveryResponse(version_info=self.version_info).SerializeToString()
        tail = discovery_pb2.DiscoveryResponse(type_url=self.type_url, nonce=self.nonce).SerializeToString()
        return b"".join([head, *[entry.field for entry in self.entries], tail])


def _serialize(response: discovery_pb2.DiscoveryResponse | EncodedResponse) -> bytes:
    return response.SerializeToString()


@dataclass
class _TypeState:
    subscribed: bool = False
    names: frozenset[str] = frozenset()
    sent_version: str | None = None
    sent_nonce: str = ""
    accepted_version: str = ""  # what Envoy says it runs (version_info of its last request)
    # Set for endpoints when clusters are sent: a replaced EDS cluster warms until it receives a
    # ClusterLoadAssignment again, even an unchanged one (else Envoy waits out its 15 s timeout).
    resend: bool = False


@dataclass
class _Stream:
    """The protocol state of one ADS stream; pure bookkeeping, no I/O."""

    node_id: str
    cache: SnapshotCache
    counter: Counter[str]
    metrics: CpMetrics = field(default_factory=CpMetrics)
    types: dict[str, _TypeState] = field(default_factory=lambda: {t: _TypeState() for t in SERVED_TYPES})
    nonces: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    nacks_logged: set[tuple[str, str | None]] = field(default_factory=set)

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[EncodedResponse]:
        self.metrics.xds_request(request.type_url, request.version_info, request.HasField("error_detail"))
        state = self.types.get(request.type_url)
        if state is None:
            log.debug("%s asked for unserved type %s", self.node_id, request.type_url)
            return []
        if request.response_nonce and request.response_nonce != state.sent_nonce:
            return []  # answers a response that a newer one has superseded
        if not request.response_nonce or not request.HasField("error_detail"):
            state.accepted_version = request.version_info
        else:
            self._log_nack(request, state)
            # Envoy may have applied part of it (LDS does): what it runs is no known version.
            state.accepted_version = ""
        names = frozenset(request.resource_names)
        names_changed = state.subscribed and names != state.names
        state.subscribed, state.names = True, names
        current = self._current(request.type_url)
        if current is None or not (names_changed or state.resend or _lacks(state, current.version)):
            return []
        return [self._respond(request.type_url, state, current)]

    def on_snapshot_change(self) -> list[EncodedResponse]:
        responses = []
        for type_url in (*PUSH_ORDER, ROUTE_TYPE):
            state = self.types[type_url]
            current = self._current(type_url)
            if state.subscribed and current is not None and (state.resend or _lacks(state, current.version)):
                responses.append(self._respond(type_url, state, current))
        return responses

    def _current(self, type_url: str) -> TypeSnapshot | None:
        snapshot = self.cache.get(self.node_id)
        return snapshot.get(type_url) if snapshot is not None else None

    def _respond(self, type_url: str, state: _TypeState, current: TypeSnapshot) -> EncodedResponse:
        state.sent_version, state.sent_nonce = current.version, str(next(self.nonces))
        state.resend = False
        if type_url == CLUSTER_TYPE:
            self.types[ENDPOINT_TYPE].resend = True
        self.counter[type_url] += 1
        self.metrics.xds_responses_sent.labels(type_url).inc()
        # Listeners and clusters are always sent whole; endpoints and routes only as named
        # (an empty list there means "none", not "all").
        entries = current.select(state.names if type_url in NAMED_TYPES else None)
        log.debug(
            "%s ← %s version %s (%d)", self.node_id, short_type(type_url), current.version, len(entries)
        )
        return EncodedResponse(current.version, type_url, state.sent_nonce, entries)

    def _log_nack(self, request: discovery_pb2.DiscoveryRequest, state: _TypeState) -> None:
        key = (request.type_url, state.sent_version)
        if key in self.nacks_logged:
            return
        self.nacks_logged.add(key)
        log.warning(
            "Envoy %s rejected %s version %s: %s",
            self.node_id,
            short_type(request.type_url),
            state.sent_version,
            request.error_detail.message,
        )


def _lacks(state: _TypeState, version: str) -> bool:
    """Envoy neither runs this version nor has been sent it (sent and NACKed counts as sent)."""
    return version != state.sent_version and version != state.accepted_version


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(
        self,
        cache: SnapshotCache,
        hooks: StreamHooks | None = None,
        metrics: CpMetrics | None = None,
        limits: XdsServerLimits | None = None,
    ) -> None:
        self._cache = cache
        # Set by the DP server: closes the client connection behind a call's peer (the TLS front).
        self.disconnect: Callable[[str], object] = lambda peer: None
        self._hooks: StreamHooks = hooks or NoHooks()
        self._metrics = metrics or CpMetrics()
        self.limits = limits or XdsServerLimits()
        self.responses_sent: Counter[str] = Counter()  # type URL → responses sent, for metrics
        self._open_streams: set[asyncio.Queue[object]] = set()
        self._streams = 0  # streams past their first request
        self._closed = False

    @property
    def streams(self) -> int:
        return self._streams

    def queued(self) -> int:
        """The longest event queue of any open stream (bounded by request_queue_size + 3)."""
        return max((events.qsize() for events in self._open_streams), default=0)

    def close(self) -> None:
        """End every stream now (status OK, close hooks run) and refuse new ones: for shutdown."""
        self._closed = True
        for events in self._open_streams:
            events.put_nowait(_END)

    def register(self, server: grpc.aio.Server) -> None:
        """As the generated `add_AggregatedDiscoveryServiceServicer_to_server`, but responses are
        serialized by `_serialize` (they may be EncodedResponses)."""
        handlers = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.StreamAggregatedResources,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_serialize,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.DeltaAggregatedResources,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))
        server.add_registered_method_handlers(ADS_SERVICE, handlers)

    async def StreamAggregatedResources(  # noqa: N802 - gRPC's method name
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Any
    ) -> None:
        if self._closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the control plane is shutting down")
        requests = aiter(request_iterator)
        timeout = self.limits.first_request_timeout
        try:
            async with asyncio.timeout(timeout):
                first = await anext(requests, None)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no request within {timeout:g}s")
        if first is None:
            return
        # Counted from the first request on: streams that never send one time out above and
        # cannot crowd out proxies.
        if self._streams >= self.limits.max_streams:
            log.warning("ADS stream refused: %d streams are open (the limit)", self._streams)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the control plane serves at most {self.limits.max_streams} ADS streams "
                "(KUMA_XDS_SERVER_MAX_STREAMS)",
            )
        self._streams += 1
        try:
            await self._stream(first, requests, context)
        finally:
            self._streams -= 1

    async def _stream(
        self,
        first: discovery_pb2.DiscoveryRequest,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: Any,
    ) -> None:
        node = first.node
        if not node.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id")
        metadata = _text_metadata(context)
        try:
            await self._hooks.on_stream_open(node, metadata)
        except StreamRejected as exc:
            await context.abort(exc.code, exc.message)
        self._metrics.xds_streams_active.inc()
        guard = StreamGuard(self._hooks.watch_stream(node, metadata))
        try:
            serving = self._serve(node.id, first, requests)
            # Closed at once when a send fails (its reader task and cache watch go with it).
            async with guard, contextlib.aclosing(serving) as responses:
                async for response in responses:
                    await self._send(context, node.id, response)
        except asyncio.CancelledError:
            rejection = guard.rejected()
            if not isinstance(rejection, StreamRejected):  # cancelled for another reason
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            await context.abort(rejection.code, rejection.message)  # e.g. its token was revoked
        except StreamRejected as exc:
            await context.abort(exc.code, exc.message)
        finally:
            self._metrics.xds_streams_active.dec()
            await self._hooks.on_stream_close(node)

    async def _send(self, context: Any, node_id: str, response: EncodedResponse) -> None:
        """Write one response; a client that does not take it within send_timeout (it does not
        read: HTTP/2 flow control holds the write) loses its stream, so it cannot hold us up."""
        timeout = self.limits.send_timeout
        try:
            async with asyncio.timeout(timeout):  # no task per write, as wait_for would make
                await context.write(response)
        except TimeoutError:
            log.warning(
                "closing the ADS stream of %s: a response waited %gs to be read "
                "(KUMA_XDS_SERVER_SEND_TIMEOUT)",
                node_id,
                timeout,
            )
            # No status can follow a message the client does not take (abort would wait behind
            # it) and gRPC keeps a call it could not finish: the client's connection is closed
            # (which ends its calls) and the handler ends.
            self.disconnect(context.peer())
            raise asyncio.CancelledError from None

    async def _serve(
        self,
        node_id: str,
        first: discovery_pb2.DiscoveryRequest,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
    ) -> AsyncIterator[EncodedResponse]:
        stream = _Stream(node_id, self._cache, self.responses_sent, self._metrics)
        # Bounded: at most request_queue_size requests read ahead (the reader then stops reading
        # and HTTP/2 flow control stops the client), one pending snapshot change, one end.
        events: asyncio.Queue[object] = asyncio.Queue()
        room = asyncio.Semaphore(self.limits.request_queue_size)
        change_pending = False

        def snapshot_changed() -> None:
            nonlocal change_pending
            if not change_pending:
                change_pending = True
                events.put_nowait(_SNAPSHOT_CHANGED)

        await room.acquire()  # the first request's place
        events.put_nowait(first)
        stop_watch = self._cache.watch(node_id, snapshot_changed)
        reader = asyncio.create_task(_read(requests, events, room), name=f"ads-read {node_id}")
        self._open_streams.add(events)
        try:
            while (event := await events.get()) is not _END:
                if event is _SNAPSHOT_CHANGED:
                    change_pending = False
                    responses = stream.on_snapshot_change()
                else:
                    assert isinstance(event, discovery_pb2.DiscoveryRequest)
                    room.release()
                    responses = stream.on_request(event)
                for response in responses:
                    yield response
        finally:
            self._open_streams.discard(events)
            stop_watch()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def DeltaAggregatedResources(  # noqa: N802 - gRPC's method name
        self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: Any
    ) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "incremental (delta) xDS is not served; use SotW ADS"
        )


async def _read(
    requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
    events: asyncio.Queue[object],
    room: asyncio.Semaphore,
) -> None:
    try:
        while True:
            await room.acquire()  # read no further ahead than the queue allows
            request = await anext(requests, None)
            if request is None:
                break
            events.put_nowait(request)
    except (grpc.RpcError, asyncio.CancelledError):
        pass
    finally:
        events.put_nowait(_END)


def _text_metadata(context: Any) -> dict[str, str]:
    """The stream's initial metadata (e.g. `authorization`), without binary `-bin` entries."""
    return {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
