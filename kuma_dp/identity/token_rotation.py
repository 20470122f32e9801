"""Getting a changed dataplane token to Envoy's ADS stream (docs/identity.md, "Token rotation").

Envoy sends the token as gRPC initial metadata taken from its bootstrap, which it reads only at
start: nothing in Envoy re-reads it (file-based metadata credentials read their file once, hot
restart is disabled). So, on a token change, the agent
1. fetches a fresh bootstrap with the new token (this also proves the CP accepts it) and writes it,
   so any later Envoy start (crash restart included) uses the new token;
2. leaves the running Envoy alone while its ADS stream is up (the stream's token was checked
   when it opened), and restarts it, after the usual drain, only when the stream has been down for
   ADS_STALE_TOKEN_RESTART_S while the CP accepts the new token: that Envoy can only be failing
   with its old token, and its config is frozen meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from kuma_dp import constants as c
from kuma_dp.envoy.admin import EnvoyAdmin
from kuma_dp.errors import BootstrapError
from kuma_dp.identity.token_refusal import ads_connected
from kuma_dp.token_source import TokenSource

log = logging.getLogger("token")


class TokenRotation:
    """Tracks which token generation the bootstrap on disk and the running Envoy hold."""

    def __init__(
        self,
        tokens: TokenSource,
        refresh_bootstrap: Callable[[], Awaitable[None]],
        admin: EnvoyAdmin,
        request_restart: Callable[[], None],
        restart_after_s: float = c.ADS_STALE_TOKEN_RESTART_S,
    ) -> None:
        self._tokens = tokens
        self._refresh_bootstrap = refresh_bootstrap
        self._admin = admin
        self._request_restart = request_restart
        self._restart_after_s = restart_after_s
        self._changed = asyncio.Event()
        self.bootstrap_generation = tokens.generation
        self.envoy_generation = tokens.generation

    async def on_token_change(self) -> None:
        self._changed.set()

    def envoy_starting(self) -> None:
        """Called right before each Envoy start: it reads the bootstrap on disk."""
        self.envoy_generation = self.bootstrap_generation

    async def _refresh(self) -> bool:
        generation = self._tokens.generation
        try:
            await self._refresh_bootstrap()
        except BootstrapError as exc:
            log.warning("could not refresh the bootstrap with the new dataplane token: %s", exc)
            return False
        self.bootstrap_generation = generation
        return True

    async def refresh_on_change(self) -> None:
        """Until cancelled: after each token change, a new bootstrap (retried until it works)."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            backoff = c.RENEWAL_BACKOFF_INITIAL_S
            while not await self._refresh():
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, c.RENEWAL_BACKOFF_MAX_S)
                self._changed.clear()  # the retry reads the newest token anyway
            log.info("bootstrap refreshed with the new dataplane token; Envoy uses it from its next start")

    async def _ads_connected(self) -> bool | None:
        return await ads_connected(self._admin)

    async def watch_ads(self) -> None:
        """Until cancelled: restart an Envoy holding an old token whose ADS stream stays down."""
        down_since: float | None = None
        while True:
            await asyncio.sleep(c.ADS_WATCH_INTERVAL_S)
            if self.envoy_generation >= self.bootstrap_generation:
                down_since = None
                continue
            if await self._ads_connected() is not False:
                down_since = None
                continue
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since < self._restart_after_s:
                continue
            # The CP must accept the new token right now, else a restart would not help.
            if await self._refresh():
                log.warning(
                    "Envoy's ADS stream has been down for %.0fs since the dataplane token changed; "
                    "restarting Envoy with the new token",
                    now - down_since,
                )
                self._request_restart()
            down_since = None
