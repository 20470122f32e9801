"""Reading the Tcp backend's FIFO: Envoy's file access logger writes `{"address", "message"}`
lines into `kuma-al-<name>-<mesh>.sock` in the work dir (`kuma_common/accesslog.py`); each line
goes to the sender of its address.

Envoy must never stall on it: the FIFO is made, and opened for reading, before Envoy starts, so
Envoy's open never blocks; the agent also holds a write end itself, so the reader never sees an
end of file when Envoy restarts and reopens it. The reader is always drained at once: it only
splits lines and hands them to the senders' bounded buffers (`sender.py`), never waiting on a
collector. The pipe is enlarged (1 MiB where allowed) to absorb bursts while the agent is busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path

from kuma_common.accesslog import access_log_socket_path, parse_line
from kuma_dp.accesslogs.sender import Sender, SenderLimits

log = logging.getLogger("access-logs")

PIPE_SIZE = 1024 * 1024
MAX_LINE_BYTES = 256 * 1024  # a longer line (no newline in sight) is dropped
MAX_COLLECTORS = 64  # distinct addresses; lines for more are dropped
_READ_CHUNK = 256 * 1024


class AccessLogStreamer:
    def __init__(self, path: Path, limits: SenderLimits | None = None) -> None:
        self.path = path
        self._limits = limits or SenderLimits()
        self._read_fd = self._write_fd = -1
        self._partial = bytearray()
        self._skipping = False  # inside an over-long line: drop until its newline
        self.senders: dict[str, Sender] = {}
        self.malformed = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._open()

    def _open(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.mkfifo(self.path, 0o600)
        try:
            self._read_fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self._write_fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self.close()  # a FIFO nobody reads would block Envoy's open of it: never leave one
            raise
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self._read_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    async def run(self) -> None:
        """Read until cancelled; then close and remove the FIFO."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self._read_fd, self._drain)
        try:
            await asyncio.Event().wait()
        finally:
            loop.remove_reader(self._read_fd)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.close()

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._write_fd = -1
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _drain(self) -> None:
        """Everything readable now, split into lines (called by the loop when the FIFO has data)."""
        while True:
            try:
                chunk = os.read(self._read_fd, _READ_CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                return
            self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if self._skipping:
                self._skipping = False
            else:
                self._partial += chunk[start : end + 1]
                self._dispatch(bytes(self._partial))
            self._partial.clear()
            start = end + 1
        if not self._skipping:
            self._partial += chunk[start:]
            if len(self._partial) > MAX_LINE_BYTES:
                self._partial.clear()
                self._skipping = True
                self.malformed += 1

    def _dispatch(self, line: bytes) -> None:
        parsed = parse_line(line)
        if parsed is None:
            self._malformed("a line is neither {address, message} JSON nor address;message")
            return
        address, message = parsed
        sender = self.senders.get(address)
        if sender is None:
            sender = self._new_sender(address)
            if sender is None:
                return
        sender.offer(message)

    def _new_sender(self, address: str) -> Sender | None:
        if len(self.senders) >= MAX_COLLECTORS:
            self._malformed(f"more than {MAX_COLLECTORS} collector addresses")
            return None
        try:
            sender = Sender(address, self._limits)
        except ValueError as exc:
            self._malformed(str(exc))
            return None
        self.senders[address] = sender
        self._tasks.append(asyncio.get_running_loop().create_task(self._keep_sending(sender)))
        return sender

    async def _keep_sending(self, sender: Sender) -> None:
        """The sender's owner: it runs until cancelled; if it fails all the same (a bug), say so
        and start it again after the longest backoff, rather than lose the collector silently."""
        while True:
            try:
                await sender.run()
            except Exception:
                log.exception("access-log collector %s: the sender failed; starting it again", sender.address)
            await asyncio.sleep(self._limits.backoff_max_s)

    def _malformed(self, why: str) -> None:
        self.malformed += 1
        if self.malformed == 1:  # a control-plane bug, not the user's doing: say it once
            log.warning("access-log stream: dropping lines (%s)", why)


def start_access_log_streamer(workdir: Path, name: str, mesh: str) -> AccessLogStreamer | None:
    """The streamer for this proxy's FIFO, made before Envoy starts; None (and a warning) when
    the work dir cannot hold a FIFO: the path then leads to /dev/null, so that Envoy's Tcp
    backend entries are discarded instead of filling a regular file it would create there."""
    path = Path(access_log_socket_path(str(workdir), name, mesh))
    try:
        return AccessLogStreamer(path)
    except OSError as exc:
        log.warning("access logs to TCP collectors disabled: cannot make the FIFO %s: %s", path, exc)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
            path.symlink_to(os.devnull)
        return None
