"""Throwaway network namespaces for tests and benchmarks: create, wire with veth pairs, run inside.

    with NetnsLab() as lab:
        a, b = lab.namespace(), lab.namespace()
        lab.veth(a, "10.11.0.1/24", b, "10.11.0.2/24")
        lab.run(a, ["iptables-save"])             # a command inside a
        lab.call(a, some_function, arg)            # a module-level function inside a (see call)
        lab.popen(b, [...], uid=1000)              # a background process inside b, as UID 1000

Names are unique per lab (pid + counter + random), so labs of parallel runs never collide; every
process is killed and every namespace removed in `close()`, also when the test fails.

Nothing runs Python in a child forked from the test process (no `preexec_fn`, no bare fork): that
process has gRPC loaded, whose threads and fork handlers can abort such a child (SIGABRT, "epoll_wait:
Bad file descriptor"). Commands go through `netns_exec` (exec'd at once, then it enters the namespace
and execs the command); `call` runs the callable in a child of `netns_forkserver`, a separate
interpreter that never loads gRPC; namespaces and links are made with iproute2's `ip` (pyroute2's
`netns.create` and `NetNS` fork this process and run Python in the child: the same hazard).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tests.support import netns_exec
from tests.support.netns_forkserver import ForkServer

T = TypeVar("T")

# A stand-in application for namespace tests: answers GET on every port given as an argument with
# the peer address it sees (127.0.0.6 when Envoy delivered it) and any x-forwarded-client-cert.
PEER_ECHO_APP = """
import sys, http.server, threading
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "peer=%s port=%d\\n" % (self.client_address[0], self.server.server_address[1])
        if self.headers.get("x-forwarded-client-cert"):
            body += "xfcc=%s\\n" % self.headers["x-forwarded-client-cert"]
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
servers = [http.server.ThreadingHTTPServer(("0.0.0.0", int(p)), Handler) for p in sys.argv[1:]]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
servers[0].serve_forever()
"""


def require_root() -> None:
    """Skip without root (namespaces, veth, iptables), but fail instead when CI=true."""
    if os.geteuid() == 0:
        return
    reason = "needs root: network namespaces, veth pairs and iptables"
    if os.environ.get("CI") == "true":
        import pytest  # noqa: PLC0415 - the harness is also used by benchmarks, without pytest

        pytest.fail(reason + " (CI=true: not skipping)")
    import pytest  # noqa: PLC0415

    pytest.skip(reason)


NETNS_DIR = netns_exec.NETNS_DIR


def ip(*args: str) -> None:
    """iproute2's `ip` (exec'd, never a fork of this process running Python); raises with its stderr."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def probe_as(uid: int, probe: Callable[..., str], *args: Any) -> str:
    """For `NetnsLab.call` (its child is a throwaway process): become `uid`, then `probe(*args)`;
    an OSError is what the probe saw, as "error <reason>"."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    try:
        return probe(*args)
    except OSError as exc:
        return f"error {exc.strerror or exc}"


class NetnsLab:
    def __init__(self, prefix: str = "kt") -> None:
        self.prefix = f"{prefix}{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[Any]] = []
        self._count = 0
        self._resolv_confs: dict[str, str] = {}  # namespace → the resolv.conf its processes see

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- building -------------------------------------------------------------------------------------

    def _name(self) -> str:
        self._count += 1
        return f"{self.prefix}n{self._count}"

    def namespace(self) -> str:
        """A fresh namespace with lo up."""
        name = self._name()
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def veth(
        self, ns_a: str, cidr_a: str, ns_b: str, cidr_b: str, *extra: tuple[str, str]
    ) -> tuple[str, str]:
        """A veth pair between two namespaces, up, with an address at each end (`extra`: more
        (cidr_a, cidr_b) pairs, e.g. IPv6). Returns the interface names (a's, b's)."""
        self._count += 1
        if_a, if_b = f"va{self._count}", f"vb{self._count}"
        ip("-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        for name, ifname, cidrs in ((ns_a, if_a, [cidr_a]), (ns_b, if_b, [cidr_b])):
            cidrs += [pair[0] if name == ns_a else pair[1] for pair in extra]
            self.add_addresses(name, ifname, *cidrs)
        return if_a, if_b

    @staticmethod
    def add_addresses(name: str, ifname: str, *cidrs: str) -> None:
        """Add addresses to an interface of a namespace and bring it up."""
        for cidr in cidrs:
            # nodad: an IPv6 address usable at once, not after duplicate detection (~1 s)
            ip("-n", name, "addr", "add", cidr, "dev", ifname, *(["nodad"] if ":" in cidr else []))
        ip("-n", name, "link", "set", ifname, "up")

    def resolv_conf(self, name: str, text: str) -> None:
        """Processes started in namespace `name` from now on see `text` as /etc/resolv.conf (the
        file lives in a temporary directory; nothing under /etc changes)."""
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".resolv.conf")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o644)
        self._resolv_confs[name] = path

    def _inside(self, name: str, argv: Sequence[str], uid: int | None) -> list[str]:
        return netns_exec.command_line(name, list(argv), uid, self._resolv_confs.get(name))

    # --- running inside ---------------------------------------------------------------------------------

    def run(
        self, name: str, argv: Sequence[str], uid: int | None = None, check: bool = False, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 30)
        return subprocess.run(self._inside(name, argv, uid), text=True, check=check, **kwargs)

    def popen(
        self, name: str, argv: Sequence[str], uid: int | None = None, **kwargs: Any
    ) -> subprocess.Popen[str]:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self._inside(name, argv, uid), text=True, **kwargs)
        self.processes.append(proc)
        return proc

    def python(
        self, name: str, code: str, *args: str, uid: int | None = None, **kwargs: Any
    ) -> subprocess.Popen[str]:
        """A Python snippet as a background process inside the namespace."""
        return self.popen(name, [sys.executable, "-c", code, *args], uid=uid, **kwargs)

    def call(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` inside the namespace, in a child of the fork server (so `fn`
        and its arguments must pickle: a module-level function); return or re-raise."""
        return ForkServer.get().call(name, fn, args, kwargs)

    # --- cleanup -------------------------------------------------------------------------------------------

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.communicate(timeout=5)
        self.processes.clear()
        for name in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                ip("netns", "delete", name)
        self.namespaces.clear()
        for path in self._resolv_confs.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._resolv_confs.clear()
