"""Python callables run inside a network namespace, forked from a process that never loaded gRPC.

The test process has gRPC loaded (threads, epoll fds, fork handlers): a child forked from it that
runs Python can die of that state (SIGABRT, "epoll_wait: Bad file descriptor"). So the test process
never forks for `NetnsLab.call`: it starts this module once as a separate interpreter (a plain
exec), which imports only the namespace helpers and the probes, and asks it for each call. The
server forks a child per call; the child enters the namespace (the engine's own `netns.enter`),
unpickles the callable, runs it and writes back the pickled answer. A fork costs a few ms, where a
new interpreter per call cost ~70 ms.

Frames on the pipes: 4-byte big-endian length, then the bytes. Request: the pickled
(namespace, environ, cwd) header, then the pickled (fn, args, kwargs) — unpickled in the child only,
so the server never imports what the callable needs (gRPC included). Answer: pickled (ok, value).
"""

from __future__ import annotations

import atexit
import os
import pickle
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from typing import IO, Any

# Imported by the server before it forks (no gRPC among them): the children then start warm.
PRELOAD = ("transparent_proxy.apply", "tests.support.tproxy_probes", "tests.support.dns_probes")


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack(">I", head)
    return stream.read(size)


def picklable(exc: BaseException) -> BaseException:
    try:
        pickle.dumps(exc)
        return exc
    except Exception:  # noqa: BLE001 - fall back to the text
        return RuntimeError("".join(traceback.format_exception(exc)))


class ForkServer:
    """One per test process, started on first use; `call` is safe from several threads."""

    _instance: ForkServer | None = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.netns_forkserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
        atexit.register(self.close)

    @classmethod
    def get(cls) -> ForkServer:
        if cls._instance is None or cls._instance._proc.poll() is not None:
            cls._instance = ForkServer()
        return cls._instance

    def call(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        header = pickle.dumps((name, dict(os.environ), os.getcwd()))
        payload = pickle.dumps((fn, args, kwargs))  # fails here, clearly, for a closure or a lambda
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with self._lock:
            _write_frame(self._proc.stdin, header)
            _write_frame(self._proc.stdin, payload)
            answer = _read_frame(self._proc.stdout)
        if answer is None:
            raise RuntimeError(f"the netns fork server died (exit {self._proc.wait()})")
        ok, value = pickle.loads(answer)
        if not ok:
            raise value
        return value

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


# --- the server (python -m tests.support.netns_forkserver) -------------------------------------------


def _child(header: bytes, payload: bytes, answer_fd: int) -> None:
    """In the forked child: never returns."""
    code = 0
    try:
        os.dup2(2, 1)  # the callable's prints go to stderr; fd `answer_fd` carries the answer
        from transparent_proxy import netns  # noqa: PLC0415 - preloaded: no cost

        name, environ, cwd = pickle.loads(header)
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        try:
            netns.enter(name)
            fn, args, kwargs = pickle.loads(payload)
            result: tuple[bool, Any] = (True, fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - sent to the parent
            result = (False, picklable(exc))
        with os.fdopen(answer_fd, "wb") as answer:
            _write_frame(answer, pickle.dumps(result))
    except BaseException:  # noqa: BLE001 - the server reports the death
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """One call at a time: fork, wait, and answer for a child that died without answering."""
    while (header := _read_frame(requests)) is not None:
        payload = _read_frame(requests) or b""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(header, payload, write_fd)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            answer = pipe.read()
        _, status = os.waitpid(pid, 0)
        if not answer:
            died = RuntimeError(f"the child in namespace {pickle.loads(header)[0]} died ({_status(status)})")
            data = pickle.dumps((False, died))
            answer = struct.pack(">I", len(data)) + data
        answers.write(answer)
        answers.flush()


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


if __name__ == "__main__":
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints must not corrupt the answers
    serve(sys.stdin.buffer, out)
