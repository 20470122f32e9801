"""Polling: call a condition until it holds, for code that must wait on another process.

`wait_until` (blocking) and `eventually` (asyncio, the condition may be a coroutine function) return
the condition's first truthy value. Until the deadline, an exception of a `retry_on` type counts as
"not yet" (a server still starting refuses connections); any other exception propagates at once.
At the deadline they raise `NotMet`, an AssertionError naming `what` and the last value or error.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
DEFAULT_INTERVAL_S = 0.05


class NotMet(AssertionError):
    """The condition did not hold before the deadline."""


def wait_until(
    condition: Callable[[], T],
    timeout: float = 15.0,
    *,
    what: str = "condition",
    interval: float = DEFAULT_INTERVAL_S,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: Any = condition()
            if last:
                return last
        except retry_on as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise NotMet(f"{what} not met within {timeout:g}s (last: {last!r})")
        time.sleep(interval)


async def eventually(
    condition: Callable[[], Awaitable[T] | T],
    timeout: float = 5.0,
    *,
    what: str = "condition",
    interval: float = DEFAULT_INTERVAL_S,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: Any = condition()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last
        except retry_on as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise NotMet(f"{what} not met within {timeout:g}s (last: {last!r})")
        await asyncio.sleep(interval)
