"""Ending the agent when the control plane no longer accepts its dataplane token.

The control plane re-checks every open ADS stream's token and ends the stream of a token that was
revoked, expired, or whose signing key was removed (control_plane/dp_server/stream_reverify.py).
Envoy would then retry forever with the same token, serving frozen config, and the agent's
certificate renewals would keep failing. So when Envoy's ADS stream has been down for
ADS_DOWN_PROBE_S, the agent asks the control plane once (`POST /bootstrap` with the current
token): a 401 ends the agent with exit 1 and the reason the control plane gave; anything else (CP
away, a 5xx) changes nothing and is asked again after the next down period. With a token file a
replaced, valid token is what the probe sends, so a rotation in time keeps the agent running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from kuma_dp import constants as c
from kuma_dp.bootstrap_client import BootstrapRefused
from kuma_dp.envoy.admin import EnvoyAdmin
from kuma_dp.errors import AgentError, BootstrapError

log = logging.getLogger("token")

UNAUTHORIZED = 401


class TokenRefused(AgentError):
    """The control plane refuses the dataplane token now (it accepted it at start)."""


async def ads_connected(admin: EnvoyAdmin) -> bool | None:
    """Envoy's `control_plane.connected_state`; None when the admin API cannot tell."""
    try:
        stats = await admin.stats(f"^{c.ADS_CONNECTED_STAT.replace('.', '[.]')}$")
    except (httpx.HTTPError, ValueError):
        return None
    value = stats.get(c.ADS_CONNECTED_STAT)
    return None if value is None else value == 1


async def probe_token(probe: Callable[[], Awaitable[object]]) -> None:
    """Run one bootstrap `probe`; TokenRefused if the CP answers 401, nothing otherwise."""
    try:
        await probe()
    except BootstrapRefused as exc:
        if exc.status == UNAUTHORIZED:
            raise TokenRefused(
                f"the control plane no longer accepts the dataplane token ({exc.reason}) and closed "
                "Envoy's ADS stream; give the agent a new token (kumactl generate dataplane-token) "
                "and start it again"
            ) from None
        log.warning("the control plane refused a bootstrap check: %s", exc)
    except BootstrapError as exc:
        log.info("could not check the dataplane token with the control plane: %s", exc)


async def watch_token_refusal(
    admin: EnvoyAdmin, probe: Callable[[], Awaitable[object]], down_after_s: float = c.ADS_DOWN_PROBE_S
) -> None:
    """Until cancelled, or TokenRefused: probe the token whenever ADS has been down `down_after_s`."""
    down_since: float | None = None
    while True:
        await asyncio.sleep(c.ADS_WATCH_INTERVAL_S)
        if await ads_connected(admin) is not False:
            down_since = None
            continue
        now = time.monotonic()
        down_since = down_since or now
        if now - down_since >= down_after_s:
            await probe_token(probe)
            down_since = None
