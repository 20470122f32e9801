"""Benchmark: one `kuma-cni` ADD (process start → exit) in a fresh pod namespace, against the
reference `bridge` plugin's own ADD measured in the same run, the way a runtime calls them.

Per round: a fresh node namespace (the bridge lives there, never on the host) and a fresh pod
namespace; `loopback` ADD, then `bridge` ADD (+ host-local IPAM) timed, then `kuma-cni` ADD timed
(the launcher `kuma-cni-install` wrote, fed the bridge's result as prevResult: the pod has IPv4 and
link-local IPv6, so both families are installed), then kuma-cni CHECK and DEL timed.
Every time includes the same fork + setns + exec as a runtime's.

Target (issue 5): kuma-cni ADD ≤ 200 ms. Needs root.
Run alone: `.venv/bin/python -m bench.cni_add [--profile quick]`; all sections: `bench/run`.
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Measure, Profile, Target  # noqa: E402
from bench.report import run_alone  # noqa: E402
from tests.support.cni_runtime import Runtime, bare_namespace  # noqa: E402
from tests.support.netns_lab import NetnsLab  # noqa: E402

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


SECTION = "CNI"


def measure(profile: Profile) -> list[Measure]:
    rounds = [_round() for _ in range(max(profile.repetitions, 3) if not profile.smoke else 1)]
    bridge = [r["bridge ADD"] for r in rounds]
    return [
        Measure(SECTION, "kuma-cni ADD (process start → exit, IPv4 + IPv6 rules)", "ms",
                [r["kuma-cni ADD"] for r in rounds], "bridge plugin ADD", bridge, Target(TARGET_MS),
                note=f"CHECK {statistics.median(r['kuma-cni CHECK'] for r in rounds):.0f} ms, "
                f"DEL {statistics.median(r['kuma-cni DEL'] for r in rounds):.0f} ms"),
    ]  # fmt: skip


if __name__ == "__main__":
    run_alone(measure, __doc__)
