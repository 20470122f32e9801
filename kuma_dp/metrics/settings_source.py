"""The settings source: polls `GET /meshmetric` on Envoy's Unix socket in the work dir (the control
plane configures that listener when a MeshMetric selects the proxy; kuma_common/dp_contract.py)
with If-None-Match, every `interval` seconds.

No socket (no MeshMetric, or Envoy not configured yet) means the default settings (no
applications, Kuma's Basic profile); a body that is not the contract's keeps the last settings and
is logged once. Never raises, so it cannot take the agent down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import httpx

from kuma_common.dp_contract import METRICS_CONFIG_PATH
from kuma_dp.metrics.settings import MetricsSettings, SettingsError, parse_settings

log = logging.getLogger("metrics")

_MAX_BYTES = 1024 * 1024


class SettingsSource:
    def __init__(
        self, socket_path: Path, interval: float, on_change: Callable[[MetricsSettings], None]
    ) -> None:
        self.socket_path = socket_path
        self.interval = interval
        self.on_change = on_change
        self.etag: str | None = None
        self._reported: str | None = None

    async def run(self) -> None:
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
        async with httpx.AsyncClient(transport=transport, timeout=2.0, trust_env=False) as client:
            while True:
                await self.poll_once(client)
                await asyncio.sleep(self.interval)

    async def poll_once(self, client: httpx.AsyncClient) -> None:
        if not self.socket_path.exists():
            self._reset()
            return
        headers = {"if-none-match": self.etag} if self.etag else {}
        try:
            response = await client.get(f"http://kuma-dp{METRICS_CONFIG_PATH}", headers=headers)
        except (httpx.HTTPError, OSError) as exc:
            log.debug("metrics settings: cannot reach %s: %s", self.socket_path, exc)
            return
        if response.status_code == 304:
            return
        if response.status_code != 200 or len(response.content) > _MAX_BYTES:
            self._reset()
            return
        try:
            settings = parse_settings(response.content)
        except SettingsError as exc:
            if self._reported != str(exc):
                self._reported = str(exc)
                log.warning("metrics settings from %s: %s", self.socket_path, exc)
            return
        self.etag = response.headers.get("etag")
        self.on_change(settings)
        log.debug("metrics settings: %s", settings)

    def _reset(self) -> None:
        if self.etag is not None:
            self.etag = None
            self.on_change(MetricsSettings())
