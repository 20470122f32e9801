"""The agent's work directory and the private files written into it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kuma_dp.constants import WORK_DIR_MODE, WORK_DIR_PREFIX
from kuma_dp.errors import ConfigError

log = logging.getLogger("workdir")


@contextlib.contextmanager
def work_dir(given: Path | None) -> Iterator[Path]:
    """A given dir is created if missing and kept; otherwise a fresh temp dir (0711) removed on exit."""
    if given is not None:
        try:
            given.mkdir(mode=WORK_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--work-dir {given}: cannot create: {exc.strerror or exc}") from None
        if not os.access(given, os.W_OK | os.X_OK):
            raise ConfigError(f"--work-dir {given}: not writable")
        yield given.absolute()
        return
    path = Path(tempfile.mkdtemp(prefix=WORK_DIR_PREFIX))
    try:
        path.chmod(WORK_DIR_MODE)
        log.debug("work dir %s", path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_private_file(path: Path, data: bytes, mode: int) -> None:
    """Write `data` readable by the owner only, replacing any previous file atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask or a pre-existing file must not widen it
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
