"""The benchmark report: a text table for the terminal, a Markdown table for the README, and JSON.

Pure formatting (plus `machine()`, which reads the host once); writing files is left to the caller.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import PROFILES, Measure, Profile, spread

README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"
HEADERS = ("section", "measure", "ours: median (min–max)", "baseline: median", "ratio", "target")


def machine() -> dict[str, Any]:
    """Where the figures came from: they are only comparable on the same machine."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def rows(measures: Sequence[Measure]) -> list[tuple[str, ...]]:
    return [_row(m) for m in measures]


def _row(m: Measure) -> tuple[str, ...]:
    low, high = spread(m.samples)
    ours = f"{_num(m.median)} {m.unit} ({_num(low)}–{_num(high)})"
    base = f"{m.baseline_name}: {_num(m.baseline_median)} {m.unit}" if m.baseline_median is not None else "—"
    ratio = f"{m.ratio:.2f}×" if m.ratio is not None else "—"
    target = "—"
    if m.target is not None:
        target = f"{m.target.describe(m.unit)} {'✓' if m.target_met else '✗'}"
    name = f"{m.name} — {m.note}" if m.note else m.name
    return (m.section, name, ours, base, ratio, target)


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def text_table(measures: Sequence[Measure]) -> str:
    table = [HEADERS, *rows(measures)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(measures: Sequence[Measure], host: dict[str, Any], profile: str) -> str:
    lines = [
        f"Profile `{profile}`, {host['date']}, on {host['cores']} cores ({host['cpu']}), "
        f"{host['memory_gib']} GiB, Linux {host['kernel']}, Python {host['python']}.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows(measures)]
    return "\n".join(lines)


def replace_readme_block(readme: str, block: str) -> str:
    """Put `block` between the bench markers, which must exist once each, in order."""
    begin, end = readme.find(README_BEGIN), readme.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"README has no {README_BEGIN} … {README_END} block")
    return readme[: begin + len(README_BEGIN)] + "\n" + block + "\n" + readme[end:]


def to_json(measures: Sequence[Measure], host: dict[str, Any], profile: str, errors: dict[str, str]) -> dict:
    return {
        "profile": profile,
        "machine": host,
        "measures": [m.to_json() for m in measures],
        "errors": errors,
    }


def run_alone(measure: Callable[[Profile], list[Measure]], doc: str, default: str = "full") -> None:
    """`python -m bench.<section> [--profile quick]`: one section, printed as the table."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default=default)
    print(text_table(measure(PROFILES[parser.parse_args().profile])))
