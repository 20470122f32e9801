"""Request body bounds for the control plane's HTTP apps (DP server and API): size and read time.

A body declared larger than the limit (Content-Length) is refused before the app sees it; a
chunked one as soon as it passes the limit. Either way the app never holds more than the limit:
the rest is read and dropped (bounded in bytes and time) so that the client, still sending, sees
the 413 (naming the limit and how to raise it) rather than a reset. A body that trickles in
slower than `read_timeout` gets 408.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOO_LARGE_TITLE = "request body too large"
TOO_SLOW_TITLE = "request body not received in time"
# How much of a refused body is read (and dropped) so that the client sees the 413.
DRAIN_MAX_BYTES = 64 << 20
DRAIN_TIMEOUT_S = 10.0


class BodyLimit:
    """ASGI middleware; `hint` ends the 413 message (e.g. which setting raises the limit)."""

    def __init__(self, app: ASGIApp, max_bytes: int, hint: str, read_timeout: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.hint = hint
        self.read_timeout = read_timeout

    def too_large_message(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes ({self.hint})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._drain(receive)
            response = JSONResponse(
                {"title": TOO_LARGE_TITLE, "details": self.too_large_message()},
                status_code=413,
                headers={"connection": "close"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, self._bounded(receive), send)

    def _bounded(self, receive: Receive) -> Receive:
        received = 0
        deadline: float | None = None
        done = False

        async def bounded_receive() -> Message:
            nonlocal received, deadline, done
            if done:  # the body is complete: later calls wait for a disconnect, unbounded
                return await receive()
            loop = asyncio.get_running_loop()
            if deadline is None and self.read_timeout is not None:
                deadline = loop.time() + self.read_timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                details = f"the request body did not arrive within {self.read_timeout:g}s"
                raise HTTPException(408, details) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await self._drain(receive)
                    raise HTTPException(413, self.too_large_message())
                done = not message.get("more_body", False)
            return message

        return bounded_receive

    async def _drain(self, receive: Receive) -> None:
        """Read and drop the rest of a refused body (bounded in bytes and time) before answering:
        a client still sending when the server closes gets a reset, not the 413."""
        dropped = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.read_timeout or DRAIN_TIMEOUT_S):
                while dropped <= DRAIN_MAX_BYTES:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    dropped += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
