"""Go-style durations ("300ms", "1.5h", "2h45m", "0"), as Kuma's flags and env vars use them."""

from __future__ import annotations

import re

_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Longest units first so that "ms" is not read as "m" followed by garbage.
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class DurationError(ValueError):
    """A text that is not a Go duration."""


def parse_duration(text: str) -> float:
    """Parse a Go duration into seconds; raise DurationError naming the text when invalid."""
    raw = text.strip()
    body = raw[1:] if raw[:1] in "+-" else raw
    if body == "0":
        return 0.0
    if not body:
        raise DurationError(f"{text!r} is not a duration (expected e.g. 300ms, 30s, 5m, 1h30m)")
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _PART.match(body, pos)
        if match is None:
            raise DurationError(f"{text!r} is not a duration (expected e.g. 300ms, 30s, 5m, 1h30m)")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return -total if raw.startswith("-") else total


def parse_positive_duration(text: str) -> float:
    """`parse_duration` for what cannot be zero or negative (a validity, a drain time)."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise DurationError(f"must be a positive duration, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds the short way Go prints them (1m0s, 1.5s, 200ms) for messages."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    out = f"{secs:g}s"
    if minutes or hours:
        out = f"{minutes}m" + out
    if hours:
        out = f"{hours}h" + out
    return out
