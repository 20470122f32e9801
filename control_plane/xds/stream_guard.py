"""Ending an ADS stream from outside its protocol loop: when a watcher (e.g. the periodic token
check, control_plane/dp_server/stream_reverify.py) decides the stream must end.

`until_rejected` relays a stream's responses until the watcher raises StreamRejected; then the
protocol loop is cancelled (its own cleanup runs) and the rejection is raised to the handler,
which ends the RPC with the rejection's status. The server itself knows nothing of tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

T = TypeVar("T")


async def until_rejected(responses: AsyncIterator[T], watch: Awaitable[None] | None) -> AsyncIterator[T]:
    """`responses`, until it ends or `watch` raises (StreamRejected); `watch` None: no watcher.
    A watcher that returns normally stops watching."""
    if watch is None:
        async for item in responses:
            yield item
        return
    watcher: asyncio.Future[None] = asyncio.ensure_future(watch)
    try:
        while True:
            step = asyncio.ensure_future(anext(responses))
            if not watcher.done():
                await asyncio.wait({step, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher.done() and watcher.exception() is not None:
                step.cancel()  # the protocol loop's own cleanup (watches, reader task) runs
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                raise watcher.exception()  # type: ignore[misc]
            try:
                item = await step
            except StopAsyncIteration:
                return
            yield item
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        aclose = getattr(responses, "aclose", None)
        if aclose is not None:  # the protocol loop's cleanup, now rather than when collected
            await aclose()
