"""Keeps Envoy running: restart after a crash with exponential backoff, give up after too many.

Kuma and its peers exit when Envoy dies and leave restarts to systemd/kubelet; restarting here
keeps the work dir, bootstrap and (later) identity, and is much faster than a pod restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kuma_dp.constants import RESTART_BACKOFF_INITIAL_S, RESTART_BACKOFF_MAX_S
from kuma_dp.envoy.process import EnvoyLaunch, EnvoyProcess, describe_exit, running_envoy
from kuma_dp.errors import EnvoyError

log = logging.getLogger("supervisor")


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int
    window_s: float
    backoff_initial_s: float = RESTART_BACKOFF_INITIAL_S
    backoff_max_s: float = RESTART_BACKOFF_MAX_S


class CrashHistory:
    """Crash times within the sliding window; decides the next backoff or that it is time to give up."""

    def __init__(self, policy: RestartPolicy) -> None:
        self._policy = policy
        self._crashes: deque[float] = deque()

    def record(self, now: float) -> float | None:
        """Record a crash at `now`: the delay before restarting, or None when restarts are exhausted."""
        self._crashes.append(now)
        while self._crashes and self._crashes[0] <= now - self._policy.window_s:
            self._crashes.popleft()
        if len(self._crashes) > self._policy.max_restarts:
            return None
        delay = self._policy.backoff_initial_s * 2 ** (len(self._crashes) - 1)
        return min(delay, self._policy.backoff_max_s)

    @property
    def recent(self) -> int:
        return len(self._crashes)


async def _first_of(envoy: EnvoyProcess, shutdown: asyncio.Event) -> None:
    """Return when Envoy exits or shutdown is requested, whichever comes first."""
    exited = asyncio.ensure_future(envoy.wait())
    requested = asyncio.ensure_future(shutdown.wait())
    try:
        await asyncio.wait({exited, requested}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        requested.cancel()
        exited.cancel()


async def _sleep_unless(event: asyncio.Event, seconds: float) -> bool:
    """Sleep; True if the event fired meanwhile."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
        return True
    except TimeoutError:
        return False


async def supervise(
    launch: EnvoyLaunch,
    policy: RestartPolicy,
    shutdown: asyncio.Event,
    on_shutdown: Callable[[EnvoyProcess], Awaitable[None]],
    before_start: Callable[[], None] = lambda: None,
) -> None:
    """Run Envoy until shutdown (then `on_shutdown` drains and stops it); EnvoyError when giving up."""
    history = CrashHistory(policy)
    while not shutdown.is_set():
        before_start()
        async with running_envoy(launch) as envoy:
            await _first_of(envoy, shutdown)
            if shutdown.is_set():
                if envoy.returncode is None:
                    await on_shutdown(envoy)
                return
            code = await envoy.wait()
        delay = history.record(time.monotonic())
        if delay is None:
            raise EnvoyError(
                f"Envoy crashed {history.recent} times in {policy.window_s:g}s; "
                f"giving up (last exit: {describe_exit(code)})"
            )
        log.error("Envoy exited unexpectedly (%s); restarting in %gs", describe_exit(code), delay)
        if await _sleep_unless(shutdown, delay):
            return
