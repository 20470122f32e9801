"""What the control plane and the agent agree on for the Tcp access-log backend (Kuma's contract).

Envoy cannot speak to a TCP collector itself, so the control plane points its file access logger
at a FIFO in the agent's work dir, `kuma-al-<name>-<mesh>.sock` (Kuma's name, cut to fit a Unix
socket path), and wraps every entry as one JSON line `{"address": "<host:port>", "message": ...}`
(Kuma 2.x); the agent reads the FIFO and sends each message to its address. The message is the
formatted text (ending in a newline), or a JSON object for the Json format, which the agent sends
as one line. Kuma's older `<address>;<message>` lines are still understood.
"""

from __future__ import annotations

import json
import os

_MAX_PATH_STEM = 98  # Kuma's: the stem is cut so the whole path fits a Unix socket's 104 bytes


def access_log_socket_path(workdir: str, name: str, mesh: str) -> str:
    """Where Envoy writes Tcp-backend entries and the agent reads them."""
    stem = os.path.join(workdir, f"kuma-al-{name}-{mesh}")
    return stem[:_MAX_PATH_STEM] + ".sock"


def parse_line(line: bytes) -> tuple[str, bytes] | None:
    """(address, bytes to send) of one line Envoy wrote, or None when it is neither form."""
    try:
        wrapped = json.loads(line)
    except ValueError:
        wrapped = None
    if isinstance(wrapped, dict) and isinstance(wrapped.get("address"), str) and "message" in wrapped:
        message = wrapped["message"]
        if isinstance(message, str):
            return wrapped["address"], message.encode()
        return wrapped["address"], json.dumps(message, separators=(",", ":")).encode() + b"\n"
    address, sep, rest = line.partition(b";")  # Kuma's legacy form
    if not sep or not address:
        return None
    try:
        return address.decode(), rest if rest.endswith(b"\n") else rest + b"\n"
    except UnicodeDecodeError:
        return None
