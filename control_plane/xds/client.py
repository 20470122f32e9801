"""A minimal ADS client speaking as Envoy does: for protocol tests and load benchmarks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

_INVALID_ARGUMENT = 3  # google.rpc.Code, as Envoy reports a rejected config


class StreamEnded(Exception):
    """The server ended the stream with status OK."""


class AdsClient:
    """One ADS stream. Requests are queued; responses are read in the background, so waiting
    for one with a timeout never cancels the call (a timed-out `call.read()` would)."""

    def __init__(
        self, channel: grpc.aio.Channel, node: base_pb2.Node, metadata: Sequence[tuple[str, str]] = ()
    ) -> None:
        self._node: base_pb2.Node | None = node  # sent on the first request only, as Envoy does
        self._requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self._responses: asyncio.Queue[discovery_pb2.DiscoveryResponse | BaseException] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.StreamAggregatedResources(self._outgoing(), metadata=tuple(metadata))
        self._reader = asyncio.create_task(self._incoming())

    def send(
        self,
        type_url: str,
        version: str = "",
        nonce: str = "",
        names: Sequence[str] = (),
        error: str = "",
    ) -> None:
        """Queue a request; `error` makes it a NACK of the response `nonce`."""
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, version_info=version, response_nonce=nonce, resource_names=list(names)
        )
        if self._node is not None:
            request.node.CopyFrom(self._node)
            self._node = None
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=error))
        self._requests.put_nowait(request)

    def ack(self, response: discovery_pb2.DiscoveryResponse, names: Sequence[str] = ()) -> None:
        self.send(response.type_url, response.version_info, response.nonce, names)

    async def recv(self, timeout: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        """The next response; raises TimeoutError, StreamEnded or the call's AioRpcError."""
        item = await asyncio.wait_for(self._responses.get(), timeout)
        if isinstance(item, BaseException):
            self._responses.put_nowait(item)  # later calls see the same end
            raise item
        return item

    async def close(self) -> None:
        self._requests.put_nowait(None)
        self.call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _outgoing(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def _incoming(self) -> None:
        try:
            async for response in self.call:
                self._responses.put_nowait(response)
            self._responses.put_nowait(StreamEnded("the server ended the stream"))
        except grpc.aio.AioRpcError as exc:
            self._responses.put_nowait(exc)
        except asyncio.CancelledError:
            self._responses.put_nowait(StreamEnded("the stream was cancelled"))
