"""The namespace harness never runs Python in a child forked from the test process.

That process has gRPC loaded; a forked child running Python before exec (subprocess's `preexec_fn`,
a bare fork, pyroute2's forks) once died of gRPC's state (SIGABRT, "epoll_wait: Bad file
descriptor") in kuma-init's namespace test. Python runs `os.register_at_fork` hooks in exactly such
children (never after a plain fork+exec), so a hook that writes to a pipe counts them: building
namespaces, running commands (as another UID, with a resolv.conf) and calling Python inside must
leave it empty, and still do what they say.
"""

from __future__ import annotations

import os
import socket

import grpc

from labkit.waiting import wait_until
from tests.support.netns_lab import NetnsLab, require_root

_report_fd: list[int] = []  # armed while the test runs: hooks registered at fork stay for the session


def _forked_child_runs_python() -> None:
    if _report_fd:
        os.write(_report_fd[0], b"x")


os.register_at_fork(after_in_child=_forked_child_runs_python)


def _interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def test_the_lab_builds_runs_and_calls_without_forking_python() -> None:
    require_root()
    channel = grpc.insecure_channel("127.0.0.1:9")  # gRPC loaded and its threads alive, as in a full run
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    _report_fd.append(write_fd)
    try:
        with NetnsLab("tx") as lab:
            a, b = lab.namespace(), lab.namespace()
            if_a, _ = lab.veth(a, "10.93.0.1/24", b, "10.93.0.2/24", ("fd93::1/64", "fd93::2/64"))
            assert lab.call(a, _interfaces) == sorted(["lo", if_a])  # inside a, not the host
            assert f"dev {if_a}" in lab.run(a, ["ip", "-6", "route", "get", "fd93::2"], check=True).stdout
            assert lab.run(b, ["id", "-u"], uid=1000).stdout.strip() == "1000"
            lab.resolv_conf(b, "nameserver 10.93.0.53\n")
            assert lab.run(b, ["cat", "/etc/resolv.conf"]).stdout == "nameserver 10.93.0.53\n"
            sleeper = lab.popen(a, ["sleep", "30"])  # the helper's pid, then (exec) sleep's, in a
            wait_until(lambda: os.readlink(f"/proc/{sleeper.pid}/exe").endswith("sleep"), timeout=10)
            assert os.readlink(f"/proc/{sleeper.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    finally:
        _report_fd.clear()
        channel.close()
    try:
        forks = os.read(read_fd, 100)
    except BlockingIOError:
        forks = b""
    os.close(read_fd)
    os.close(write_fd)
    assert forks == b"", f"{len(forks)} child(ren) of the test process ran Python before exec"
