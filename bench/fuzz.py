"""The parser fuzz suite (tests/test_fuzz_parsers.py), run long: CI runs 150 examples per parser;
this runs `--examples` (default 5,000) and reports the time. Not part of `bench/run`'s figures.

Run: `.venv/bin/python -m bench.fuzz [--examples 20000]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--examples", type=int, default=5000)
    args = parser.parse_args(argv)
    env = {**os.environ, "KUMA_FUZZ_EXAMPLES": str(args.examples)}
    started = time.monotonic()
    argv_ = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz_parsers.py"]
    code = subprocess.run(argv_, cwd=ROOT, env=env, check=False).returncode
    print(f"fuzz: {args.examples} examples per parser, {time.monotonic() - started:.0f} s, exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
