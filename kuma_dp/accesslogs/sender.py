"""One collector: a TCP connection to it, kept up, and a bounded buffer of lines waiting for it.

Envoy must never wait for a collector, so the reader hands lines over with `offer`, which never
blocks: when the buffer is full (a collector that is down, slow, or accepts and never reads) the
oldest lines make room and are counted as dropped, with one warning at the start of a streak of
drops and one line saying how many when it ends. The connection is made again after a failure,
with exponential backoff; lines arriving meanwhile wait in the buffer (bounded the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass

log = logging.getLogger("access-logs")


@dataclass(frozen=True)
class SenderLimits:
    max_buffered_bytes: int = 4 * 1024 * 1024  # per collector: lines waiting to be sent
    batch_bytes: int = 64 * 1024  # written at once (then drained): what a dying connection can lose
    connect_timeout_s: float = 5.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0


def split_address(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6]:port"; ValueError when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


class Sender:
    def __init__(self, address: str, limits: SenderLimits) -> None:
        self.address = address
        self._host, self._port = split_address(address)
        self._limits = limits
        self._lines: deque[bytes] = deque()
        self._bytes = 0
        self._waiting = asyncio.Event()
        self.sent = 0  # lines written to a connection
        self.dropped = 0  # lines dropped since start
        self._streak = 0  # lines dropped since the last time the buffer was emptied
        self._unreachable = False  # a connection failure was reported and no connection since

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    def offer(self, line: bytes) -> None:
        """Queue one line; never blocks (drops the oldest lines when over the bound)."""
        self._lines.append(line)
        self._bytes += len(line)
        while self._bytes > self._limits.max_buffered_bytes and self._lines:
            self._bytes -= len(self._lines.popleft())
            self.dropped += 1
            self._streak += 1
            if self._streak == 1:
                log.warning(
                    "access-log collector %s is not taking lines fast enough (or is unreachable): "
                    "dropping the oldest (buffer bound %d bytes)",
                    self.address,
                    self._limits.max_buffered_bytes,
                )
        self._waiting.set()

    async def run(self) -> None:
        """Connect, send, reconnect on failure, until cancelled."""
        delay = self._limits.backoff_initial_s
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self._host, self._port), self._limits.connect_timeout_s
                )
            except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a name IDNA refuses
                if not self._unreachable:
                    log.warning("access-log collector %s unreachable (%s); retrying", self.address, exc)
                    self._unreachable = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._limits.backoff_max_s)
                continue
            if self._unreachable:
                log.info("access-log collector %s reachable again", self.address)
                self._unreachable = False
            delay = self._limits.backoff_initial_s
            try:
                await self._pump(reader, writer)
            except (OSError, ConnectionError) as exc:
                log.warning("access-log collector %s: connection lost (%s); reconnecting", self.address, exc)
                self._unreachable = True
            finally:
                writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await asyncio.wait_for(writer.wait_closed(), 1)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Write batches while the connection lasts; a collector closing its end ends it."""
        closed = asyncio.ensure_future(reader.read(1))  # collectors send nothing: EOF or junk
        try:
            while True:
                if not self._lines:
                    self._waiting.clear()
                    waiting = asyncio.ensure_future(self._waiting.wait())
                    done, _ = await asyncio.wait({waiting, closed}, return_when=asyncio.FIRST_COMPLETED)
                    if closed in done:
                        waiting.cancel()
                        raise ConnectionError("closed by the collector")
                writer.write(self._take_batch())
                await writer.drain()
                if not self._lines:
                    self._end_streak()
        finally:
            closed.cancel()

    def _take_batch(self) -> bytes:
        batch, size = [], 0
        while self._lines and (not batch or size + len(self._lines[0]) <= self._limits.batch_bytes):
            line = self._lines.popleft()
            batch.append(line)
            size += len(line)
        self._bytes -= size
        self.sent += len(batch)
        return b"".join(batch)

    def _end_streak(self) -> None:
        if self._streak:
            log.warning("access-log collector %s: %d lines were dropped", self.address, self._streak)
            self._streak = 0
