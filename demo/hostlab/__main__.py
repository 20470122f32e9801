"""`python -m demo.hostlab up [--backends N] [--detach] | down | status` (as root).

Without root, `up` says why and runs the loopback demo (`python -m demo`) instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from demo.hostlab import runner
from demo.hostlab.network import MAX_BACKENDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.hostlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="bring the lab up, send traffic, print the table")
    up.add_argument("--backends", type=int, default=1, help=f"backend hosts (1-{MAX_BACKENDS}; default 1)")
    up.add_argument("--detach", action="store_true", help="return once up, leaving the lab for `down`")
    up.add_argument("--rate", type=float, default=200.0, help="requests per second web sends (default 200)")
    up.add_argument("--duration", type=float, default=3.0, help="seconds of traffic (default 3)")
    commands.add_parser("down", help="stop and remove everything the lab made (also after a crash)")
    commands.add_parser("status", help="the table of a running lab")
    args = parser.parse_args(argv)
    if args.command == "up" and not 1 <= args.backends <= MAX_BACKENDS:
        parser.error(f"--backends {args.backends}: must be between 1 and {MAX_BACKENDS}")
    if os.geteuid() != 0:
        return _not_root(args.command)
    if args.command == "up":
        return runner.up(args.backends, args.detach, args.rate, args.duration)
    if args.command == "down":
        return runner.down()
    return runner.status()


def _not_root(command: str) -> int:
    why = "the host lab needs root (network namespaces, a bridge, iptables rules, UID switches)"
    if command != "up":
        print(f"{why}: nothing to {command}", file=sys.stderr)
        return 1
    print(f"{why}; running the loopback demo instead (python -m demo)", file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "demo"])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
