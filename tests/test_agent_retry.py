"""The start-up retry schedule (kuma_dp.retry): jittered within one backoff, never growing, and
spread across agents."""

from __future__ import annotations

import random
import statistics

from kuma_dp.retry import MIN_FRACTION, retry_delay_s

BACKOFF_S = 3.0
AGENTS = 1000


def _retries(seed: int = 0) -> list[float]:
    """One retry of 1,000 agents restarted together (each agent has its own random source)."""
    return [retry_delay_s(BACKOFF_S, random.Random(seed * AGENTS + agent)) for agent in range(AGENTS)]


def test_thousand_agents_do_not_retry_in_lockstep() -> None:
    delays = _retries()
    assert all(MIN_FRACTION * BACKOFF_S <= d <= BACKOFF_S for d in delays)
    # Spread over the whole window [1.5 s, 3 s]: no 100 ms slot gets more than 10 % of the agents
    # (a constant 3 s backoff puts all 1,000 in one slot); the spread is close to a uniform's
    # (σ = 1.5/√12 ≈ 0.43).
    slots = [0] * 15
    for delay in delays:
        slots[min(int((delay - 1.5) / 0.1), 14)] += 1
    assert max(slots) < AGENTS // 10
    assert statistics.pstdev(delays) > 0.38


def test_the_window_never_grows_past_one_backoff() -> None:
    # An agent that has been retrying for a long time still tries again within one backoff of the
    # control plane coming up (tests/test_e2e_mesh.py: ready within 5 s of the CP).
    rng = random.Random(1)
    draws = [retry_delay_s(BACKOFF_S, rng) for _ in range(5000)]
    assert max(draws) <= BACKOFF_S and max(draws) > 0.99 * BACKOFF_S
    assert min(draws) >= 1.5 and min(draws) < 1.51


def test_a_short_configured_backoff_keeps_retries_short() -> None:
    rng = random.Random(2)
    assert max(retry_delay_s(0.1, rng) for _ in range(50)) <= 0.1
