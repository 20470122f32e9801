"""HTTP load from real load generators: `hey` at a fixed rate, `wrk` to saturation.

Parsing is pure (and unit-tested on their real output); running them is the only side effect.
Both keep connections alive (HTTP/1.1), as a sidecar's client usually does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

HEY_WORKERS = 10
WRK_CONNECTIONS = 16


class LoadError(Exception):
    """The load generator is missing, failed, or saw errors or non-2xx answers."""


@dataclass(frozen=True)
class LoadResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int


def run_fixed_rate(url: str, rate: int, seconds: float) -> LoadResult:
    """`hey`: `rate` requests/s in total for `seconds`, spread over HEY_WORKERS connections."""
    per_worker = max(1, rate // HEY_WORKERS)
    argv = ["hey", "-z", f"{seconds:g}s", "-c", str(HEY_WORKERS), "-q", str(per_worker)]
    return parse_hey(_run([*argv, "-disable-compression", url], seconds))


def run_saturation(url: str, seconds: float) -> LoadResult:
    """`wrk`: as many requests as WRK_CONNECTIONS connections on one thread can make."""
    argv = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency", url]
    return parse_wrk(_run(argv, seconds))


def _run(argv: list[str], seconds: float) -> str:
    if shutil.which(argv[0]) is None:
        raise LoadError(f"{argv[0]} is not installed (bash scripts/setup.sh installs it as root)")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise LoadError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def parse_hey(text: str) -> LoadResult:
    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", text)}
    errors = re.search(r"Error distribution:(.*)", text, re.S)
    bad = {code: n for code, n in statuses.items() if not 200 <= code < 300}
    if errors or bad or not statuses:
        detail = errors.group(1).strip()[:300] if errors else f"status codes {statuses}"
        raise LoadError(f"hey saw failed requests: {detail}")
    return LoadResult(
        requests_per_s=float(_match(r"Requests/sec:\s+([\d.]+)", text)),
        p50_ms=float(_match(r"50% in ([\d.]+) secs", text)) * 1000,
        p99_ms=_hey_p99_seconds(text) * 1000,
        requests=sum(statuses.values()),
    )


def _hey_p99_seconds(text: str) -> float:
    """hey leaves out the percentiles its few samples cannot give (under ~100 requests): the
    slowest request is then the 99th percentile."""
    found = re.search(r"99% in ([\d.]+) secs", text)
    return float(found.group(1) if found else _match(r"Slowest:\s+([\d.]+) secs", text))


def parse_wrk(text: str) -> LoadResult:
    if re.search(r"Non-2xx or 3xx responses|Socket errors", text):
        raise LoadError(f"wrk saw failed requests: {text.strip()[-300:]}")
    return LoadResult(
        requests_per_s=float(_match(r"Requests/sec:\s+([\d.]+)", text)),
        p50_ms=_wrk_ms(_match(r"50%\s+([\d.]+\w+)", text)),
        p99_ms=_wrk_ms(_match(r"99%\s+([\d.]+\w+)", text)),
        requests=int(_match(r"(\d+) requests in", text)),
    )


_WRK_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * _WRK_UNITS_MS[unit]


def _match(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise LoadError(f"unexpected load generator output (no {pattern!r}): {text.strip()[-300:]}")
    return found.group(1)
