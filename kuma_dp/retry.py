"""When to retry the start-up calls (bootstrap, first certificate): Kuma's constant
`KUMA_CONTROL_PLANE_RETRY_BACKOFF`, jittered, so a thousand agents restarted together spread their
retries instead of hitting the control plane in lockstep every 3 s.

The window does not grow with the attempts: an agent started before its control plane must be
ready within one backoff of the control plane coming up (an exponential window reached 12 s after
a few attempts and broke that). Each wait is drawn in [backoff/2, backoff]: the agents' phases
decorrelate after one round, and the request rate stays within 4/3 of Kuma's.

Pure: the random source is passed in, so the schedule's spread is unit-tested.
"""

from __future__ import annotations

import random

# The shortest wait, as a fraction of the configured backoff.
MIN_FRACTION = 0.5


def retry_delay_s(backoff_s: float, rng: random.Random) -> float:
    """The wait after a failed attempt: a uniform draw in [MIN_FRACTION·backoff, backoff]."""
    return rng.uniform(MIN_FRACTION * backoff_s, backoff_s)
