"""Leader election: the jobs only one control-plane instance may run (Kuma's leader).

The store's LeaderLock decides (an advisory lock on PostgreSQL, held by a connection; always ours
on memory and SQLite). Every `poll_s` a follower tries to take it and the leader checks it still
holds it; on taking it the leader jobs start, on losing it (the database let the connection go)
they are cancelled at once. A leader whose process dies loses the lock with its connection, so
another instance takes over within `poll_s` of the database noticing (Kuma's lease: 5 s).

Jobs: deregistering Dataplanes whose proxy went away, allocating VIPs, forgetting dead instances.
A job that fails is restarted after `restart_s` (logged), never ends the control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from control_plane.store.base import LeaderLock

log = logging.getLogger(__name__)

POLL_S = 1.0
RESTART_S = 1.0

Job = tuple[str, Callable[[], Awaitable[None]]]


@dataclass
class LeaderElection:
    lock: LeaderLock
    jobs: Sequence[Job]
    instance_id: str
    poll_s: float = POLL_S
    restart_s: float = RESTART_S
    on_change: Callable[[bool], None] | None = None  # e.g. the `leader` gauge
    is_leader: bool = field(default=False, init=False)
    _running: asyncio.Task[None] | None = field(default=None, init=False)

    async def run(self) -> None:
        try:
            while True:
                await self._step()
                await asyncio.sleep(self.poll_s)
        finally:
            await self._stop_jobs()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.lock.release)

    async def _step(self) -> None:
        try:
            holds = await asyncio.to_thread(self.lock.still_held if self.is_leader else self.lock.try_acquire)
        except Exception as exc:  # the database away: not leader (any more)
            log.debug("leader lock: %s", exc)
            holds = False
        if holds and not self.is_leader:
            log.info("this control plane (%s) is now the leader", self.instance_id)
            self._set(True)
            self._running = asyncio.create_task(self._run_jobs(), name="leader-jobs")
        elif not holds and self.is_leader:
            log.warning(
                "this control plane (%s) lost the leadership; stopping the leader jobs", self.instance_id
            )
            self._set(False)
            await self._stop_jobs()

    def _set(self, leader: bool) -> None:
        self.is_leader = leader
        if self.on_change is not None:
            self.on_change(leader)

    async def _run_jobs(self) -> None:
        async with asyncio.TaskGroup() as group:
            for name, job in self.jobs:
                group.create_task(self._keep_running(name, job), name=f"leader-{name}")

    async def _keep_running(self, name: str, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await job()
                return
            except Exception:
                log.exception("leader job %s failed; starting it again in %gs", name, self.restart_s)
                await asyncio.sleep(self.restart_s)

    async def _stop_jobs(self) -> None:
        task, self._running = self._running, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
