"""Throwaway network namespaces for tests and benchmarks: create, wire with veth pairs, run inside.

    with NetnsLab() as lab:
        a, b = lab.namespace(), lab.namespace()
        lab.veth(a, "10.11.0.1/24", b, "10.11.0.2/24")
        lab.run(a, ["iptables-save"])             # a command inside a
        lab.call(a, some_function, arg)            # a Python callable inside a (forked child)
        lab.popen(b, [...], uid=1000)              # a background process inside b, as UID 1000

Names are unique per lab (pid + counter + random), so labs of parallel runs never collide; every
process is killed and every namespace removed in `close()`, also when the test fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import secrets
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pyroute2 import NetNS
from pyroute2 import netns as pr_netns

from transparent_proxy import netns

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


CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"
_libc = ctypes.CDLL(None, use_errno=True)


def setns(name: str) -> None:
    """Move the calling process (single-threaded: a fresh child) into the named namespace."""
    fd = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_SLAVE = 0x1000, 0x4000, 0x80000


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def use_resolv_conf(path: str) -> None:
    """What `ip netns exec` does with /etc/netns/<name>/resolv.conf: in a mount namespace of the
    calling process's own (changes below / do not leak out), `path` shows as /etc/resolv.conf."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None), "mount --make-rslave /")
    _check(_libc.mount(path.encode(), b"/etc/resolv.conf", None, MS_BIND, None), "bind resolv.conf")


def _preexec(name: str, uid: int | None, resolv_conf: str | None = None) -> Callable[[], None]:
    def enter() -> None:
        setns(name)
        if resolv_conf is not None:
            use_resolv_conf(resolv_conf)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return enter


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
        pr_netns.create(name)
        self.namespaces.append(name)
        with NetNS(name) as ns:
            (lo,) = ns.link_lookup(ifname="lo")
            ns.link("set", index=lo, state="up")
        return name

    def veth(
        self, ns_a: str, cidr_a: str, ns_b: str, cidr_b: str, *extra: tuple[str, str]
    ) -> tuple[str, str]:
        """A veth pair between two namespaces, up, with an address at each end (`extra`: more
        (cidr_a, cidr_b) pairs, e.g. IPv6). Returns the interface names (a's, b's)."""
        self._count += 1
        if_a, if_b = f"va{self._count}", f"vb{self._count}"
        with NetNS(ns_a) as ns:
            ns.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": ns_b})
        for name, ifname, cidrs in ((ns_a, if_a, [cidr_a]), (ns_b, if_b, [cidr_b])):
            cidrs += [pair[0] if name == ns_a else pair[1] for pair in extra]
            self.add_addresses(name, ifname, *cidrs)
        return if_a, if_b

    @staticmethod
    def add_addresses(name: str, ifname: str, *cidrs: str) -> None:
        """Add addresses to an interface of a namespace and bring it up."""
        with NetNS(name) as ns:
            (index,) = ns.link_lookup(ifname=ifname)
            for cidr in cidrs:
                address, prefix = cidr.split("/")
                # nodad: an IPv6 address usable at once, not after duplicate detection (~1 s)
                flags = {"flags": 0x02} if ":" in address else {}
                ns.addr("add", index=index, address=address, prefixlen=int(prefix), **flags)
            ns.link("set", index=index, state="up")

    def resolv_conf(self, name: str, text: str) -> None:
        """Processes started in namespace `name` from now on see `text` as /etc/resolv.conf (the
        file lives in a temporary directory; nothing under /etc changes)."""
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".resolv.conf")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o644)
        self._resolv_confs[name] = path

    def _enter(self, name: str, uid: int | None) -> Callable[[], None]:
        return _preexec(name, uid, self._resolv_confs.get(name))

    # --- running inside ---------------------------------------------------------------------------------

    def run(
        self, name: str, argv: Sequence[str], uid: int | None = None, check: bool = False, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 30)
        return subprocess.run(list(argv), preexec_fn=self._enter(name, uid), text=True, check=check, **kwargs)

    def popen(
        self, name: str, argv: Sequence[str], uid: int | None = None, **kwargs: Any
    ) -> subprocess.Popen[str]:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(list(argv), preexec_fn=self._enter(name, uid), text=True, **kwargs)
        self.processes.append(proc)
        return proc

    def python(
        self, name: str, code: str, *args: str, uid: int | None = None, **kwargs: Any
    ) -> subprocess.Popen[str]:
        """A Python snippet as a background process inside the namespace."""
        return self.popen(name, [sys.executable, "-c", code, *args], uid=uid, **kwargs)

    def call(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` in a forked child inside the namespace; return or re-raise."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns into the test
            os.close(read_fd)
            try:
                netns.enter(name)  # the engine's own helper (libc setns), exercised here
                payload = (True, fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - sent to the parent
                payload = (False, _picklable(exc))
            with os.fdopen(write_fd, "wb") as pipe:
                pickle.dump(payload, pipe)
            os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        os.waitpid(pid, 0)
        if not data:
            raise RuntimeError(f"child in {name} died without an answer")
        ok, value = pickle.loads(data)
        if not ok:
            raise value
        return value

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
                pr_netns.remove(name)
        self.namespaces.clear()
        for path in self._resolv_confs.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._resolv_confs.clear()


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.dumps(exc)
        return exc
    except Exception:  # noqa: BLE001 - fall back to the text
        return RuntimeError("".join(traceback.format_exception(exc)))
