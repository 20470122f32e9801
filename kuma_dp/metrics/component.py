"""The metrics hijacker as one task of the agent: its socket and its settings source."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from kuma_common.dp_contract import METRICS_CONFIG_SOCKET, METRICS_HIJACKER_SOCKET
from kuma_dp.envoy.admin import AdminAddress
from kuma_dp.metrics.hijacker import Hijacker
from kuma_dp.metrics.settings_source import SettingsSource

log = logging.getLogger("metrics")

SETTINGS_POLL_INTERVAL_S = 1.0


async def run_metrics(workdir: Path, admin: AdminAddress, timeout_s: float) -> None:
    """Serve scrapes on `<workdir>/kuma-metrics-hijacker.sock` until cancelled. A socket that
    cannot be made (a work dir path too long for one) costs the metrics endpoint, not the agent."""
    try:
        await _serve(workdir, admin, timeout_s)
    except* OSError as group:
        log.warning("metrics: no merged metrics endpoint: %s", group.exceptions[0])


async def _serve(workdir: Path, admin: AdminAddress, timeout_s: float) -> None:
    hijacker = Hijacker(workdir / METRICS_HIJACKER_SOCKET, admin, timeout_s)
    source = SettingsSource(workdir / METRICS_CONFIG_SOCKET, SETTINGS_POLL_INTERVAL_S, hijacker.update)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(hijacker.serve())
        tasks.create_task(source.run())
