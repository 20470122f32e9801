"""Secrets in the environment: the agent reads them once, then no child process may inherit them.

Envoy, `envoy --version` and the key-generating child need nothing from `KUMA_DATAPLANE_RUNTIME_TOKEN`;
an inherited token would be readable in `/proc/<pid>/environ` of each of them and in a crash
dump of any. `kuma-dp run` removes the variables from its own environment once the RunConfig is
built (so every later child starts without them) and gives its children `child_environment()`
explicitly as well.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from kuma_dp import constants as c

SECRET_VARIABLES: tuple[str, ...] = (c.ENV_TOKEN,)


def child_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: the agent's own) without the secret variables."""
    source = os.environ if env is None else env
    return {key: value for key, value in source.items() if key not in SECRET_VARIABLES}


def scrub_own_environment() -> None:
    """Forget the secret variables in this process (after the RunConfig has read them)."""
    for key in SECRET_VARIABLES:
        os.environ.pop(key, None)
