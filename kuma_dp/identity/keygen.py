"""A new key and its CSR, made by a child process (`python -m kuma_dp.identity.keygen`).

The child reads `{"uris": [...]}` on stdin and writes `{"key": PEM, "csr": PEM}` on stdout: the key
travels through a pipe, never through a file or a log. About 0.1 s; `kuma-dp run` starts the first
one before it imports the agent (`EarlyKeygen`), so making it overlaps the agent's own start-up
and the bootstrap request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from kuma_dp.errors import AgentError
from kuma_dp.secrets_env import child_environment

_STDERR_LIMIT = 2000


class KeygenError(AgentError):
    """The key/CSR child failed (a broken installation: cryptography missing or unusable)."""


@dataclass(frozen=True)
class KeyAndCsr:
    key_pem: bytes = field(repr=False)  # never printed
    csr_pem: bytes


# -I: the current directory must not be able to shadow the code that makes the key.
_CHILD_ARGV = (sys.executable, "-I", "-m", __name__)


def _request(uris: Sequence[str]) -> bytes:
    return json.dumps({"uris": list(uris)}).encode()


async def generate(uris: Sequence[str]) -> KeyAndCsr:
    """Run the child; it is killed and reaped if we are cancelled."""
    import asyncio  # noqa: PLC0415 - `kuma-dp run` imports this module before asyncio (EarlyKeygen)

    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        *_CHILD_ARGV, stdin=pipe, stdout=pipe, stderr=pipe, env=child_environment()
    )
    try:
        out, err = await proc.communicate(_request(uris))
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
    return _result(proc.returncode, out, err)


class EarlyKeygen:
    """The first key's child, started before there is an event loop; `result()` collects it.

    A context manager: on exit a child nobody collected is killed and reaped.
    """

    def __init__(self, uris: Sequence[str]) -> None:
        pipe = subprocess.PIPE
        self._proc = subprocess.Popen(
            _CHILD_ARGV, stdin=pipe, stdout=pipe, stderr=pipe, env=child_environment()
        )
        self._request = _request(uris)

    def __enter__(self) -> EarlyKeygen:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()

    async def result(self) -> KeyAndCsr:
        """The key and CSR; the child is killed if we are cancelled meanwhile."""
        import asyncio  # noqa: PLC0415 - see generate()

        try:
            out, err = await asyncio.to_thread(self._proc.communicate, self._request)
        except asyncio.CancelledError:
            self._proc.kill()  # the thread's communicate() then returns at once
            raise
        return _result(self._proc.returncode, out, err)


def _result(returncode: int | None, out: bytes, err: bytes) -> KeyAndCsr:
    if returncode != 0:
        detail = err.decode("utf-8", "replace").strip()[-_STDERR_LIMIT:]
        raise KeygenError(f"could not make a key and CSR (exit {returncode}): {detail}")
    document = json.loads(out)
    return KeyAndCsr(document["key"].encode(), document["csr"].encode())


def main() -> None:
    from kuma_dp.identity.keys import build_csr, key_pem, new_key  # noqa: PLC0415 - child only

    request = json.load(sys.stdin)
    key = new_key()
    csr = build_csr(key, request["uris"])
    json.dump({"key": key_pem(key).decode(), "csr": csr.decode()}, sys.stdout)


if __name__ == "__main__":
    main()
