"""Trace collectors for tests, real servers on loopback that keep what Envoy sends them:

- `ZipkinReceiver`: Zipkin's v2 HTTP API, `POST /api/v2/spans` with a JSON list of spans;
- `OtlpReceiver`: OTLP over gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`),
  built on `opentelemetry-proto` and grpcio; each span is kept with its resource's attributes.

Both answer as a collector does (202 / an empty ExportTraceServiceResponse).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

ZIPKIN_PATH = "/api/v2/spans"


@dataclass
class ZipkinReceiver:
    spans: list[dict[str, Any]] = field(default_factory=list)  # Zipkin v2 JSON spans, as received
    port: int = 0
    bad_requests: list[str] = field(default_factory=list)  # anything but a POST of JSON spans

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                lines = head.split("\r\n")
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
                }
                body = await _body(reader, headers)
                try:
                    if not lines[0].startswith(f"POST {ZIPKIN_PATH} ") or "json" not in headers.get(
                        "content-type", ""
                    ):
                        raise ValueError("not a POST of JSON spans")
                    self.spans.extend(json.loads(body))
                    status = "202 Accepted"
                except ValueError as exc:
                    self.bad_requests.append(f"{lines[0]}: {exc}: {body[:200]!r}")
                    status = "400 Bad Request"
                writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ZipkinReceiver]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{ZIPKIN_PATH}"


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    """The request body, sized by Content-Length or chunked (Envoy's async client chunks)."""
    if "chunked" not in headers.get("transfer-encoding", ""):
        return await reader.readexactly(int(headers.get("content-length", "0")))
    chunks = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # the end of the (empty) trailer
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the chunk's CRLF


@dataclass(frozen=True)
class OtlpSpan:
    service: str  # the resource's service.name
    trace_id: str  # hex
    span_id: str
    parent_span_id: str
    kind: str  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT, ...
    name: str
    attributes: dict[str, str]


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    async def Export(  # noqa: N802 - the gRPC method's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in _scope_spans(resource_spans):
                for span in scope_spans.spans:
                    self.receiver.spans.append(
                        OtlpSpan(
                            service=resource.get("service.name", ""),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=type(span).SpanKind.Name(span.kind),
                            name=span.name,
                            attributes=_attributes(span.attributes),
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


def _scope_spans(resource_spans: Any) -> Any:
    """ResourceSpans' field 2, whatever this copy of the OTLP protos calls it: xds-protos ships an
    older copy under the same module paths as opentelemetry-proto (`instrumentation_library_spans`
    before it was renamed `scope_spans`), and whichever pip installed last is the one imported.
    The wire format is the same."""
    field = resource_spans.DESCRIPTOR.fields_by_number[2]
    return getattr(resource_spans, field.name)


def _attributes(values: Any) -> dict[str, str]:
    return {kv.key: _text(kv.value) for kv in values}


def _text(value: common_pb2.AnyValue) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


@dataclass
class OtlpReceiver:
    spans: list[OtlpSpan] = field(default_factory=list)
    port: int = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[OtlpReceiver]:
        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield self
        finally:
            await server.stop(grace=None)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"
