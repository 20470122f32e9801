"""Turning SIGTERM/SIGINT/SIGUSR2 into events the agent's tasks wait on."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("signals")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    """`requested` on the first stop signal, `forced` on the next one (cuts the drain short)."""

    def __init__(self, on_first: Callable[[], None] = lambda: None) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self._on_first = on_first

    def signal(self, sig: signal.Signals) -> None:
        if not self.requested.is_set():
            log.info("received %s: draining, then stopping (send it again to stop at once)", sig.name)
            self._on_first()
            self.requested.set()
        else:
            log.info("received %s again: stopping now", sig.name)
            self.forced.set()


@contextmanager
def installed(shutdown: Shutdown, on_usr2: Callable[[], None]) -> Iterator[None]:
    """Route the signals to `shutdown` / `on_usr2` while inside the block."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, shutdown.signal, sig)
    loop.add_signal_handler(signal.SIGUSR2, on_usr2)
    try:
        yield
    finally:
        for sig in (*STOP_SIGNALS, signal.SIGUSR2):
            loop.remove_signal_handler(sig)
