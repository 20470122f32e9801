"""The agent's reaction to the CP's answer when it checks its token (kuma_dp/identity/token_refusal.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from kuma_dp.bootstrap_client import BootstrapRefused
from kuma_dp.errors import BootstrapError
from kuma_dp.identity.token_refusal import TokenRefused, probe_token


def _answer(exc: Exception | None) -> Callable[[], Awaitable[object]]:
    async def probe() -> object:
        if exc is not None:
            raise exc
        return object()

    return probe


def test_401_ends_the_agent_naming_the_reason() -> None:
    with pytest.raises(TokenRefused) as refused:
        asyncio.run(probe_token(_answer(BootstrapRefused(401, "invalid dataplane token; revoked"))))
    assert "no longer accepts the dataplane token (invalid dataplane token; revoked)" in str(refused.value)


@pytest.mark.parametrize(
    "exc",
    [None, BootstrapRefused(422, "invalid Dataplane"), BootstrapError("could not reach the control plane")],
)
def test_anything_else_keeps_the_agent_running(exc: Exception | None) -> None:
    asyncio.run(probe_token(_answer(exc)))
