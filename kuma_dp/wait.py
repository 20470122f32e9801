"""`kuma-dp wait`: block until the readiness URL answers 200, or give up at the timeout."""

from __future__ import annotations

import asyncio
import time

import httpx


async def wait_until_ready(
    url: str, timeout_s: float, interval_s: float, request_timeout_s: float
) -> str | None:
    """Poll `url`; None once it answers 200, else (at the timeout) what the last attempt saw."""
    deadline = time.monotonic() + timeout_s
    last = "no attempt made"
    async with httpx.AsyncClient(timeout=request_timeout_s, trust_env=False) as client:
        while True:
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return None
                last = f"HTTP {response.status_code} {response.text.strip()[:100]}".rstrip()
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return last
            await asyncio.sleep(min(interval_s, remaining))
