"""Graceful shutdown of Envoy (design flow 3) and the SIGUSR2 inbound drain.

Checked on Envoy 1.40: `POST /drain_listeners` (without `graceful`) closes the listening sockets
at once, so new connections are refused while open ones carry on; with `?graceful` the listeners
keep accepting for the whole --drain-time-s first. `POST /healthcheck/fail` beforehand makes the
HTTP connection manager add `Connection: close`, so keep-alive clients leave after their request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx

from kuma_dp.constants import DRAIN_POLL_INTERVAL_S
from kuma_dp.envoy.admin import EnvoyAdmin
from kuma_dp.envoy.process import EnvoyProcess, describe_exit

log = logging.getLogger("drain")


async def stop_accepting(admin: EnvoyAdmin) -> None:
    """Fail health checks and close every listener; a dead Envoy is fine."""
    try:
        await admin.healthcheck_fail()
        await admin.drain_listeners()
    except httpx.HTTPError as exc:
        log.warning("could not start draining Envoy through its admin API: %s", exc)


async def wait_connections_closed(
    admin: EnvoyAdmin, envoy: EnvoyProcess, drain_time_s: float, forced: asyncio.Event
) -> None:
    """Until no downstream connection is open, `drain_time_s` passed, Envoy died, or `forced` fired."""
    deadline = time.monotonic() + drain_time_s
    last_reported: int | None = None
    while envoy.returncode is None and not forced.is_set():
        try:
            active = await admin.active_downstream_connections()
        except (httpx.HTTPError, ValueError):
            active = None
        if active == 0:
            log.info("all downstream connections closed")
            return
        if active is not None and active != last_reported:
            log.info("waiting for %d open connection(s) to finish", active)
            last_reported = active
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.info("drain time elapsed with %s connection(s) still open", active)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(forced.wait(), min(DRAIN_POLL_INTERVAL_S, remaining))
    if forced.is_set():
        log.info("second signal: stopping Envoy now")


async def drain_and_stop(
    envoy: EnvoyProcess, admin: EnvoyAdmin, drain_time_s: float, forced: asyncio.Event
) -> None:
    """Stop accepting, let open connections finish (bounded), then stop Envoy."""
    if not forced.is_set():
        await stop_accepting(admin)
        await wait_connections_closed(admin, envoy, drain_time_s, forced)
    code = await envoy.stop()
    log.info("Envoy stopped (%s)", describe_exit(code))


async def drain_inbound(admin: EnvoyAdmin) -> None:
    """SIGUSR2 (native sidecar preStop): close inbound listeners only; outbound keeps working."""
    try:
        await admin.drain_listeners(inbound_only=True)
        log.info("inbound listeners drained")
    except httpx.HTTPError as exc:
        log.warning("could not drain inbound listeners: %s", exc)
