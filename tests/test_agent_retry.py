"""The start-up retry schedule (kuma_dp.retry): jittered, growing, capped, and spread across agents."""

from __future__ import annotations

import random
import statistics

from kuma_dp.retry import CAP_FACTOR, retry_delay_s

BACKOFF_S = 3.0
AGENTS = 1000


def _first_retries(seed: int = 0) -> list[float]:
    """The first retry of 1,000 agents restarted together (each agent has its own random source)."""
    return [retry_delay_s(1, BACKOFF_S, random.Random(seed * AGENTS + agent)) for agent in range(AGENTS)]


def test_thousand_agents_do_not_retry_in_lockstep() -> None:
    delays = _first_retries()
    assert all(0.0 <= d <= BACKOFF_S for d in delays)
    # Spread over the whole window: no 100 ms slot gets more than 10 % of the agents (a constant
    # 3 s backoff puts all 1,000 in one slot); the spread is close to a uniform's (σ = 3/√12 ≈ 0.87).
    slots = [0] * 30
    for delay in delays:
        slots[min(int(delay / 0.1), 29)] += 1
    assert max(slots) < AGENTS // 10
    assert statistics.pstdev(delays) > 0.7


def test_the_window_doubles_up_to_the_cap() -> None:
    rng = random.Random(1)
    for attempt, ceiling in ((1, 3.0), (2, 6.0), (3, 12.0), (4, 24.0), (5, 30.0), (60, 30.0)):
        draws = [retry_delay_s(attempt, BACKOFF_S, rng) for _ in range(2000)]
        assert max(draws) <= ceiling and max(draws) > 0.9 * ceiling, attempt
        assert min(draws) < 0.1 * ceiling
    assert CAP_FACTOR * BACKOFF_S == 30.0


def test_a_short_configured_backoff_keeps_retries_short() -> None:
    rng = random.Random(2)
    assert max(retry_delay_s(n, 0.1, rng) for n in range(1, 50)) <= 1.0
