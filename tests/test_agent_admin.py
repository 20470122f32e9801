"""How the agent reads Envoy's admin answers: readiness and open-connection counts.

Envoy's answers are canned here (shapes copied from Envoy 1.40); the real thing is exercised by
test_agent_run/test_agent_drain and by the e2e tests with ADS.
"""

from __future__ import annotations

import httpx
import pytest

from kuma_dp.envoy.admin import AdminAddress, EnvoyAdmin
from kuma_dp.readiness import ReadinessState


def envoy_admin(stats: dict[str, int], ready: str = "LIVE") -> EnvoyAdmin:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ready":
            return httpx.Response(200 if ready == "LIVE" else 503, text=ready + "\n")
        payload = {"stats": [{"name": k, "value": v} for k, v in stats.items()]}
        return httpx.Response(200, json=payload)

    return EnvoyAdmin(AdminAddress(host="127.0.0.1", port=9901), transport=httpx.MockTransport(answer))


LDS, ACTIVE = "listener_manager.lds.update_success", "listener_manager.total_listeners_active"


@pytest.mark.parametrize(
    ("stats", "ready", "expected"),
    [
        ({LDS: 1, ACTIVE: 2}, "LIVE", True),
        ({LDS: 0, ACTIVE: 1}, "LIVE", False),  # LDS configured, nothing received yet
        ({LDS: 3, ACTIVE: 0}, "LIVE", False),
        ({ACTIVE: 1}, "LIVE", True),  # static bootstrap, no LDS
        ({LDS: 1, ACTIVE: 1}, "DRAINING", False),
        ({LDS: 1, ACTIVE: 1}, "PRE_INITIALIZING", False),
    ],
)
async def test_ready_needs_live_and_listeners_from_lds(
    stats: dict[str, int], ready: str, expected: bool
) -> None:
    state = ReadinessState()
    state.admin = envoy_admin(stats, ready)
    assert await state.status() == ((200, "READY") if expected else (503, "NOT_READY"))
    state.terminating = True
    assert await state.status() == (503, "TERMINATING")


async def test_not_ready_when_admin_does_not_answer() -> None:
    state = ReadinessState()
    assert await state.status() == (503, "NOT_READY")  # before the bootstrap
    state.admin = EnvoyAdmin(AdminAddress(host="127.0.0.1", port=1))
    assert await state.status() == (503, "NOT_READY")


async def test_open_connections_exclude_admin_and_per_thread_copies() -> None:
    admin = envoy_admin(
        {
            "listener.127.0.0.1_18080.downstream_cx_active": 2,
            "listener.127.0.0.1_18080.worker_0.downstream_cx_active": 2,
            "listener.127.0.0.1_18080.worker_1.downstream_cx_active": 0,
            "listener.0.0.0.0_15001.downstream_cx_active": 1,
            "listener.admin.downstream_cx_active": 1,
            "listener.admin.main_thread.downstream_cx_active": 1,
        }
    )
    assert await admin.active_downstream_connections() == 3
