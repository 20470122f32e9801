"""Benchmark: one `kuma-cni` ADD (process start → exit) in a fresh pod namespace, against the
reference `bridge` plugin's own ADD measured in the same run, the way a runtime calls them.

Per round: a fresh node namespace (the bridge lives there, never on the host) and a fresh pod
namespace; `loopback` ADD, then `bridge` ADD (+ host-local IPAM) timed, then `kuma-cni` ADD timed
(the launcher `kuma-cni-install` wrote, fed the bridge's result as prevResult: the pod has IPv4 and
link-local IPv6, so both families are installed), then kuma-cni CHECK and DEL timed.
Every time includes the same fork + setns + exec as a runtime's.

Target (issue 5): kuma-cni ADD ≤ 200 ms. Needs root.
Run: `.venv/bin/python -m bench.cni_add [--rounds 10]`. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netns_harness import NetnsLab  # noqa: E402
from tests.test_cni_chain import Runtime, bare_namespace  # noqa: E402

TARGET_MS = 200.0


def _timed_plugin(
    runtime: Runtime, plugin: dict, command: str, pod: str, prev: dict | None
) -> tuple[float, dict]:
    conflist = runtime.network()
    started = time.perf_counter()
    code, out = runtime.exec_plugin(
        conflist, plugin, command, pod, "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench", prev
    )
    elapsed = (time.perf_counter() - started) * 1000
    if code != 0:
        raise SystemExit(f"{plugin['type']} {command} failed: {out}")
    return elapsed, out


def _round() -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="kuma-cni-bench-"))
    try:
        with NetnsLab(prefix="cnib") as lab:
            runtime = Runtime(lab, lab.namespace(), root, f"10.253.{secrets.randbelow(250) + 1}")
            runtime.install_kuma_cni()
            pod = bare_namespace(lab)
            runtime.exec_plugin(runtime.loopback, {"type": "loopback"}, "ADD", pod, "", None)
            bridge, kuma = runtime.network()["plugins"]
            times: dict[str, float] = {}
            times["bridge ADD"], result = _timed_plugin(runtime, bridge, "ADD", pod, None)
            times["kuma-cni ADD"], result = _timed_plugin(runtime, kuma, "ADD", pod, result)
            times["kuma-cni CHECK"], _ = _timed_plugin(runtime, kuma, "CHECK", pod, result)
            times["kuma-cni DEL"], _ = _timed_plugin(runtime, kuma, "DEL", pod, result)
            return times
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _line(name: str, values: list[float], target: float | None = None) -> str:
    median, worst = statistics.median(values), max(values)
    verdict = "" if target is None else ("  ok" if median <= target else f"  OVER target {target:.0f} ms")
    return f"  {name:<16} median {median:7.1f} ms   max {worst:7.1f} ms{verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    rounds = [_round() for _ in range(args.rounds)]
    print(f"CNI plugins, process start → exit, {args.rounds} fresh node + pod namespaces:")
    for key in rounds[0]:
        print(_line(key, [r[key] for r in rounds], TARGET_MS if key == "kuma-cni ADD" else None))
    ratio = statistics.median(r["kuma-cni ADD"] for r in rounds) / statistics.median(
        r["bridge ADD"] for r in rounds
    )
    print(f"  kuma-cni ADD / bridge ADD (medians): {ratio:.1f}x")


if __name__ == "__main__":
    main()
