"""Go-style durations (`10s`, `500ms`, `1m30s`, `1.5h`) as used in Kuma's configuration."""

from __future__ import annotations

import re

# Seconds per unit, as Go's time.ParseDuration accepts them ("us" and "µs" are the same unit).
_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration into seconds; raise ValueError naming the text if it is not one.

    A bare `0` is accepted, as in Go; any other number needs a unit.
    """
    value = text.strip()
    if value in ("0", "+0", "-0"):
        return 0.0
    sign = 1.0
    if value[:1] in ("+", "-"):
        sign = -1.0 if value[0] == "-" else 1.0
        value = value[1:]
    if not value:
        raise ValueError(f"{text!r} is not a duration (expected e.g. 10s, 500ms, 1m30s)")
    total = 0.0
    pos = 0
    while pos < len(value):
        match = _PART_RE.match(value, pos)
        if match is None:
            raise ValueError(f"{text!r} is not a duration (expected e.g. 10s, 500ms, 1m30s)")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """The shortest Go-style text for a number of seconds, e.g. 90 -> "1m30s", 0.5 -> "500ms"."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    rest = abs(seconds)
    if rest < 1:
        return f"{sign}{rest * 1000:g}ms"
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = ""
    if hours:
        text += f"{int(hours)}h"
    if hours or minutes:
        text += f"{int(minutes)}m"
    return f"{sign}{text}{secs:g}s"
