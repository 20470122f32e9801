"""One Envoy process: spawn it (own process group, dies with the agent), forward its log, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

from kuma_dp.constants import ENVOY_STOP_GRACE_S
from kuma_dp.errors import EnvoyError
from kuma_dp.logs import envoy_line_level
from kuma_dp.secrets_env import child_environment

log = logging.getLogger("envoy")

_PR_SET_PDEATHSIG = 1
_LINE_LIMIT = 1 << 20
# Resolved before any fork: the child must not dlopen between fork and exec.
_LIBC = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class EnvoyLaunch:
    """What is needed to start Envoy; the same object is used for every restart."""

    binary: Path
    bootstrap_path: Path
    drain_time_s: float
    log_level: str
    concurrency: int | None = None


def envoy_args(launch: EnvoyLaunch) -> list[str]:
    """Envoy's command line, as Kuma starts it."""
    args = [
        str(launch.binary),
        "--config-path",
        str(launch.bootstrap_path),
        "--drain-time-s",
        str(max(0, round(launch.drain_time_s))),
        "--drain-strategy",
        "immediate",
        "--disable-hot-restart",
        "--log-level",
        launch.log_level,
    ]
    if launch.concurrency is not None:
        args += ["--concurrency", str(launch.concurrency)]
    return args


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """preexec hook: SIGKILL this child when the agent dies (also if it died before prctl ran)."""

    def hook() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


def describe_exit(returncode: int) -> str:
    """'exit code 1' or 'signal SIGKILL' for logs and messages."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class EnvoyProcess:
    """A running Envoy; `wait()` returns its exit code once its log is fully forwarded."""

    def __init__(self, proc: asyncio.subprocess.Process, log_pump: asyncio.Task[None]) -> None:
        self._proc = proc
        self._log_pump = log_pump

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        code = await self._proc.wait()
        await asyncio.shield(self._log_pump)  # a cancelled waiter must not stop the log pump
        return code

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal Envoy's whole process group; fine if it is already gone."""
        if self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def stop(self, grace_s: float = ENVOY_STOP_GRACE_S) -> int:
        """SIGTERM, then SIGKILL after `grace_s`; always reaps. Returns the exit code."""
        self.signal_group(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), grace_s)
        except TimeoutError:
            log.warning("Envoy did not stop within %gs after SIGTERM; killing it", grace_s)
            self.signal_group(signal.SIGKILL)
            return await self.wait()


async def _forward_log(stream: asyncio.StreamReader) -> None:
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line longer than the limit: forward what is buffered
            line = await stream.read(_LINE_LIMIT)
        if not line:
            return
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        log.log(envoy_line_level(text), "[envoy] %s", text)


@contextlib.asynccontextmanager
async def running_envoy(launch: EnvoyLaunch) -> AsyncIterator[EnvoyProcess]:
    """Start Envoy; on leaving (normally, by error or by cancellation) it is stopped and reaped."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *envoy_args(launch),
            stdin=asyncio.subprocess.DEVNULL,
            env=child_environment(),  # never the dataplane token
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
            limit=_LINE_LIMIT,
        )
    except OSError as exc:
        raise EnvoyError(f"cannot start Envoy {launch.binary}: {exc.strerror or exc}") from None
    assert proc.stdout is not None
    envoy = EnvoyProcess(proc, asyncio.create_task(_forward_log(proc.stdout)))
    log.info("Envoy started (pid %d)", proc.pid)
    try:
        yield envoy
    finally:
        await _despite_cancellation(envoy.stop() if proc.returncode is None else envoy.wait())


async def _despite_cancellation(aw: Coroutine[object, object, int]) -> None:
    """Run `aw` to the end even if we are cancelled meanwhile (a child is always reaped), then
    re-raise the cancellation."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError
