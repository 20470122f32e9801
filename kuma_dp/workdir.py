"""The agent's work directory and the private files written into it.

The work dir holds the bootstrap (which carries the dataplane token) and the workload's private
key, so an existing `--work-dir` must be the agent's alone: not a symlink, owned by the agent's
user, writable by nobody else. Files are never opened by a fixed name that someone could have
planted (a symlink pointing elsewhere): each is written to a new, uniquely named file beside its
final name, created with O_EXCL|O_NOFOLLOW (`tempfile.mkstemp`), fsynced, then renamed over the
final name (a rename replaces a planted symlink instead of following it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kuma_dp.constants import WORK_DIR_MODE, WORK_DIR_PREFIX
from kuma_dp.errors import ConfigError

log = logging.getLogger("workdir")


def unsafe_reason(st: os.stat_result, uid: int) -> str | None:
    """Why a directory with lstat result `st` may not hold the agent's secrets for user `uid`
    (None when it may)."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != uid:
        return f"is owned by UID {st.st_uid}, not by the agent's user (UID {uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by its group or by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_private_dir(path: Path, what: str) -> None:
    """ConfigError naming `what` unless `path` is a safe directory for the agent's secrets."""
    try:
        reason = unsafe_reason(os.lstat(path), os.geteuid())
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot inspect: {exc.strerror or exc}") from None
    if reason is not None:
        raise ConfigError(
            f"{what} {path} {reason}: the agent keeps its token-bearing bootstrap and private key "
            "there; use a directory owned by the agent's user and writable by it only"
        )


@contextlib.contextmanager
def work_dir(given: Path | None) -> Iterator[Path]:
    """A given dir is created if missing and kept (an existing one must be safe: see
    `unsafe_reason`); otherwise a fresh temp dir (0711) removed on exit."""
    if given is not None:
        try:
            given.mkdir(mode=WORK_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--work-dir {given}: cannot create: {exc.strerror or exc}") from None
        check_private_dir(given, "--work-dir")
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


def stage_private_file(path: Path, data: bytes, mode: int) -> Path:
    """Write `data` to a new file beside `path` (unique name, O_EXCL|O_NOFOLLOW, `mode`), fsynced;
    returns its path, for the caller to rename over `path`."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp's 0600, or narrower
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)
    return Path(name)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_file(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` by a complete, fsynced file readable by the owner only."""
    os.replace(stage_private_file(path, data, mode), path)
    fsync_directory(path.parent)
