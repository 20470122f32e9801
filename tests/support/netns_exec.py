"""Exec-first entry into a network namespace: `python -I -S netns_exec.py NAME [--uid U]
[--resolv-conf PATH] -- ARGV...` enters NAME, optionally shows PATH as /etc/resolv.conf and becomes
UID U, then execs ARGV.

Why a separate program: the test process has gRPC loaded (threads, epoll fds, fork handlers), and
a child forked from it that runs Python before exec (`preexec_fn`) can die of gRPC's state (SIGABRT,
"epoll_wait: Bad file descriptor"). This helper is exec'd straight after fork (subprocess's plain
path, no Python in between), so the namespace set-up runs in a fresh interpreter that never loaded
gRPC. Standard library only (started with -I -S: ~10 ms), so it works whatever the venv holds.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_SLAVE = 0x1000, 0x4000, 0x80000
NETNS_DIR = "/var/run/netns"
EXIT_SETUP_FAILED = 125  # like `env`/`nsenter`: the helper failed, not the command

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(name: str) -> None:
    """Move this process into the named namespace (or a path such as /proc/PID/ns/net)."""
    fd = os.open(name if name.startswith("/") else f"{NETNS_DIR}/{name}", os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns({name})")
    finally:
        os.close(fd)


def use_resolv_conf(path: str) -> None:
    """What `ip netns exec` does with /etc/netns/<name>/resolv.conf: in a mount namespace of this
    process's own (changes below / do not leak out), `path` shows as /etc/resolv.conf."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None), "mount --make-rslave /")
    _check(_libc.mount(path.encode(), b"/etc/resolv.conf", None, MS_BIND, None), "bind resolv.conf")


def become(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def command_line(
    name: str, argv: list[str], uid: int | None = None, resolv_conf: str | None = None
) -> list[str]:
    """The argv that runs `argv` inside namespace `name` through this helper."""
    options = ["--uid", str(uid)] if uid is not None else []
    options += ["--resolv-conf", resolv_conf] if resolv_conf else []
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), name, *options, "--", *argv]


def main(args: list[str]) -> None:
    name, rest = args[0], args[1:]
    uid: int | None = None
    resolv_conf: str | None = None
    while rest[0] != "--":
        option, value, rest = rest[0], rest[1], rest[2:]
        if option == "--uid":
            uid = int(value)
        elif option == "--resolv-conf":
            resolv_conf = value
        else:
            raise SystemExit(f"netns_exec: unknown option {option}")
    argv = rest[1:]
    try:
        setns(name)
        if resolv_conf is not None:
            use_resolv_conf(resolv_conf)
        if uid is not None:
            become(uid)
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"netns_exec: {name}: {' '.join(argv)}: {exc}\n")
        os._exit(EXIT_SETUP_FAILED if not isinstance(exc, FileNotFoundError) else 127)


if __name__ == "__main__":
    main(sys.argv[1:])
