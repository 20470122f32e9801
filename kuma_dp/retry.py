"""When to retry the start-up calls (bootstrap, first certificate): capped exponential backoff with
full jitter, so a thousand agents restarted together spread their retries instead of hitting the
control plane in lockstep every `KUMA_CONTROL_PLANE_RETRY_BACKOFF`.

Pure: the random source is passed in, so the schedule's spread is unit-tested.
"""

from __future__ import annotations

import random

# The cap is this many times the configured backoff (3 s → 30 s, Envoy's and Kuma's usual ceiling).
CAP_FACTOR = 10.0


def retry_delay_s(attempt: int, backoff_s: float, rng: random.Random) -> float:
    """The wait after failed attempt number `attempt` (1, 2, ...): a uniform draw in
    [0, min(backoff·2^(attempt-1), CAP_FACTOR·backoff)] ("full jitter")."""
    ceiling = min(backoff_s * 2 ** min(max(attempt, 1) - 1, 32), CAP_FACTOR * backoff_s)
    return rng.uniform(0.0, ceiling)
