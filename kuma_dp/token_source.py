"""The dataplane token: given inline (`--dataplane-token`) or read from a file that may change.

Every caller (bootstrap, CSR) asks for `current()` at the moment of the call, so a token file
replaced on disk is used from the next call on, without a restart. The token is never logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchfiles import awatch

from kuma_dp.constants import TOKEN_WATCH_DEBOUNCE_MS
from kuma_dp.errors import ConfigError

log = logging.getLogger("token")

OnChange = Callable[[], Awaitable[None]]


def read_token_file(path: Path) -> str:
    """The token in `path`, stripped; ConfigError naming the file when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"--dataplane-token-file {path}: cannot read: {reason}") from None


class TokenSource:
    """The current token; `generation` counts the changes seen since start (0 = the first token)."""

    def __init__(self, token: str | None = None, path: Path | None = None) -> None:
        self.path = path
        self._token = read_token_file(path) if path is not None else (token or "")
        self.generation = 0

    def __repr__(self) -> str:  # never show the token, even in a traceback or a debugger
        return f"TokenSource(path={self.path}, generation={self.generation})"

    def current(self) -> str:
        return self._token

    def reload(self) -> bool:
        """Re-read the file; True when the token changed. A file that cannot be read (mid-replace,
        removed) keeps the previous token, with a warning."""
        if self.path is None:
            return False
        try:
            token = read_token_file(self.path)
        except ConfigError as exc:
            log.warning("%s; keeping the previous token", exc)
            return False
        if not token:
            log.warning("--dataplane-token-file %s is empty; keeping the previous token", self.path)
            return False
        if token == self._token:
            return False
        self._token = token
        self.generation += 1
        return True

    async def watch(self, on_change: OnChange, stop: asyncio.Event | None = None) -> None:
        """Until cancelled (or `stop`): reload on every change in the file's directory, which also
        sees a replacement by rename or a Kubernetes-style `..data` symlink swap."""
        if self.path is None:
            return
        directory, name = self.path.parent, self.path.name
        # watchfiles logs every change at INFO; ours is the one line that matters.
        logging.getLogger("watchfiles").setLevel(max(logging.WARNING, logging.getLogger().level))

        def concerns_token(_change: object, changed: str) -> bool:
            # The file itself, or Kubernetes' `..data` / `..<timestamp>` entries behind its symlink.
            return Path(changed).name in (name, "") or Path(changed).name.startswith("..")

        async for _changes in awatch(
            directory,
            watch_filter=concerns_token,
            debounce=TOKEN_WATCH_DEBOUNCE_MS,
            recursive=False,
            stop_event=stop,
        ):
            if self.reload():
                log.info("dataplane token file changed (%s); using the new token from now on", self.path)
                await on_change()
