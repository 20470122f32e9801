"""A new key and its CSR, made by a child process (`python -m kuma_dp.identity.keygen`).

The child reads `{"uris": [...]}` on stdin and writes `{"key": PEM, "csr": PEM}` on stdout: the key
travels through a pipe, never through a file or a log. About 0.1 s; the agent starts the first one
while it waits for the bootstrap.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from kuma_dp.errors import AgentError

_STDERR_LIMIT = 2000


class KeygenError(AgentError):
    """The key/CSR child failed (a broken installation: cryptography missing or unusable)."""


@dataclass(frozen=True)
class KeyAndCsr:
    key_pem: bytes = field(repr=False)  # never printed
    csr_pem: bytes


async def generate(uris: Sequence[str]) -> KeyAndCsr:
    """Run the child; it is killed and reaped if we are cancelled."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",  # the current directory must not be able to shadow the code that makes the key
        "-m",
        __name__,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate(json.dumps({"uris": list(uris)}).encode())
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
    if proc.returncode != 0:
        detail = err.decode("utf-8", "replace").strip()[-_STDERR_LIMIT:]
        raise KeygenError(f"could not make a key and CSR (exit {proc.returncode}): {detail}")
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
