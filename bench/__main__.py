"""`bench/run` / `python -m bench`: every benchmark section, each against a baseline measured in
the same run, printed as one table and written as JSON.

    bench/run --smoke     # N = 10, one repetition: proves the code runs (CI)
    bench/run --quick     # < 3 minutes
    bench/run             # the full run (< 20 minutes); add --readme to put the table in README.md

A section that fails is reported and the others still run; the exit code is then 1. Sections that
need root (namespaces, iptables) are skipped with the reason when not root — never when CI=true.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench.common import PROFILES, Measure, Profile
from bench.report import machine, markdown_table, replace_readme_block, text_table, to_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Section:
    name: str
    module: str
    needs_root: bool = False


SECTIONS = (
    Section("startup", "bench.startup"),
    Section("datapath", "bench.datapath"),  # data path and the agent's footprint under that load
    Section("cp-scale", "bench.cp_scale"),
    Section("tproxy", "bench.tproxy_install", needs_root=True),
    Section("cni", "bench.cni_add", needs_root=True),
    Section("identity", "bench.csr_signing"),
    Section("dns", "bench.dns"),
    Section("metrics", "bench.metrics"),  # the merged metrics endpoint (MeshMetric)
)


def run_section(section: Section, profile: Profile) -> list[Measure]:
    if section.needs_root and os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            raise RuntimeError("needs root (network namespaces, iptables), and CI=true forbids skipping")
        raise PermissionError("needs root (network namespaces, iptables): skipped")
    return importlib.import_module(section.module).measure(profile)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    profile = PROFILES[args.profile]
    wanted = [s for s in SECTIONS if not args.only or s.name in args.only]
    measures: list[Measure] = []
    errors: dict[str, str] = {}
    started = time.monotonic()
    for section in wanted:
        print(f"bench: {section.name} ({profile.name}) …", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            measures += run_section(section, profile)
        except PermissionError as skipped:
            errors[section.name] = str(skipped)
        except Exception as exc:  # one broken section must not hide the others' figures
            errors[section.name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        print(f"bench: {section.name} done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    host = machine()
    print(text_table(measures))
    for name, error in errors.items():
        print(f"{name}: {error}")
    print(f"({len(measures)} figures in {time.monotonic() - started:.0f} s, profile {profile.name})")
    _write(args, measures, host, errors)
    return 1 if any("skipped" not in e for e in errors.values()) else 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", dest="profile", action="store_const", const="smoke")
    group.add_argument("--quick", dest="profile", action="store_const", const="quick")
    group.add_argument("--full", dest="profile", action="store_const", const="full")
    parser.set_defaults(profile="full")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in SECTIONS], help="sections to run")
    parser.add_argument("--json", type=Path, help="where to write the JSON [bench/results/<profile>.json]")
    parser.add_argument("--readme", action="store_true", help="put the table into README.md")
    return parser.parse_args(argv)


def _write(args: argparse.Namespace, measures: list[Measure], host: dict, errors: dict[str, str]) -> None:
    path = args.json or RESULTS / f"{args.profile}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(measures, host, args.profile, errors), indent=2) + "\n")
    print(f"bench: wrote {path}", file=sys.stderr)
    if args.readme:
        readme = ROOT / "README.md"
        table = markdown_table(measures, host, args.profile)
        readme.write_text(replace_readme_block(readme.read_text(), table))
        print(f"bench: updated {readme}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
