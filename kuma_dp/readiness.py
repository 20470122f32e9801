"""The readiness endpoint (`GET /ready` on KUMA_READINESS_PORT): READY / NOT_READY / TERMINATING.

A hand-written asyncio HTTP/1.1 responder rather than a web framework: it serves one path and
keeps the agent's memory small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from kuma_dp.constants import ENV_READINESS_ADDRESS, ENV_READINESS_PORT, READINESS_PATH
from kuma_dp.envoy.admin import EnvoyAdmin
from kuma_dp.errors import ConfigError

log = logging.getLogger("readiness")

READY = "READY"
NOT_READY = "NOT_READY"
TERMINATING = "TERMINATING"
_REQUEST_TIMEOUT_S = 5.0
_MAX_HEADER_LINES = 100
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class ReadinessState:
    """What /ready reports: TERMINATING once shutdown started, else READY iff Envoy is live with listeners."""

    def __init__(self) -> None:
        self.terminating = False
        self.admin: EnvoyAdmin | None = None  # set once Envoy's admin address is known

    async def status(self) -> tuple[int, str]:
        if self.terminating:
            return 503, TERMINATING
        if self.admin is None:
            return 503, NOT_READY
        try:
            ready = await self.admin.is_live() and await self.admin.has_listeners()
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("Envoy admin not answering: %s", exc)
            ready = False
        return (200, READY) if ready else (503, NOT_READY)


async def start_readiness_server(state: ReadinessState, host: str, port: int) -> asyncio.Server:
    """Bind now (so a taken port is reported at once); serving starts with `serve_forever()`."""
    try:
        return await asyncio.start_server(
            lambda r, w: _handle(state, r, w), host, port, start_serving=False, reuse_address=True
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot listen for readiness on {host}:{port} ({ENV_READINESS_ADDRESS}/{ENV_READINESS_PORT}): "
            f"{exc.strerror or exc}"
        ) from None


async def _handle(state: ReadinessState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        method, path = await asyncio.wait_for(_read_request(reader), _REQUEST_TIMEOUT_S)
        status, body = await _route(state, method, path)
        _respond(writer, status, body, head_only=method == "HEAD")
        await writer.drain()
    except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
        pass  # a broken or slow client: just close
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    request_line = (await reader.readline()).decode("latin-1").split()
    if len(request_line) != 3:
        raise ValueError("bad request line")
    for _ in range(_MAX_HEADER_LINES):
        if (await reader.readline()) in (b"\r\n", b"\n", b""):
            break
    return request_line[0], request_line[1].split("?", 1)[0]


async def _route(state: ReadinessState, method: str, path: str) -> tuple[int, str]:
    if path != READINESS_PATH:
        return 404, "not found"
    if method not in ("GET", "HEAD"):
        return 405, "method not allowed"
    return await state.status()


def _respond(writer: asyncio.StreamWriter, status: int, body: str, head_only: bool) -> None:
    payload = body.encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode() + (b"" if head_only else payload))
