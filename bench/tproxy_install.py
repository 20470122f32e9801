"""Benchmark: installing transparent-proxy rules in a fresh network namespace, and `kuma-init`.

Per round, a new namespace (veth to a peer, IPv4 + IPv6 addresses) for each measurement:
- install + verify through the engine (both families, one iptables-restore each), per backend,
  timed inside the namespace (what `apply.install` costs: detection, save, restore, verify);
- reinstall over an existing install (the idempotent path) and uninstall;
- `kuma-init` end to end as a process (interpreter start, install, both validation probes).

Targets (issue 4): install ≤ 100 ms, kuma-init ≤ 500 ms. Needs root.
Run: `.venv/bin/python -m bench.tproxy_install [--rounds 10]`. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netns_harness import NetnsLab  # noqa: E402

from kuma_dp.transparent_proxy import apply  # noqa: E402
from kuma_dp.transparent_proxy.backend import Backend  # noqa: E402
from kuma_dp.transparent_proxy.sources import build_config, flag_layer  # noqa: E402

KUMA_INIT = str(Path(sys.executable).parent / "kuma-init")
CONFIG = build_config(
    {"proxy_uid": (5678, "bench")},
    flag_layer({"exclude_inbound_ports": "22", "exclude_outbound_ips": "10.99.0.0/16"}),
)


def _fresh(lab: NetnsLab) -> str:
    app, peer = lab.namespace(), lab.namespace()
    lab.veth(app, "10.90.0.1/24", peer, "10.90.0.2/24", ("fd90::1/64", "fd90::2/64"))
    return app


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _engine_round(backend: Backend) -> dict[str, float]:
    def inside() -> dict[str, float]:
        first = _timed(lambda: apply.install(CONFIG, backend=backend))
        again = _timed(lambda: apply.install(CONFIG, backend=backend))
        removed = _timed(lambda: apply.uninstall(backend=backend))
        detected = _timed(lambda: apply.install(CONFIG))  # with backend detection, as the CLIs do
        return {"install": first, "reinstall": again, "uninstall": removed, "install (detect)": detected}

    with NetnsLab("bt") as lab:
        return lab.call(_fresh(lab), inside)


def _kuma_init_round() -> float:
    with NetnsLab("bk") as lab:
        app = _fresh(lab)
        started = time.perf_counter()
        result = lab.run(app, [KUMA_INIT])
        elapsed = (time.perf_counter() - started) * 1000
        if result.returncode != 0:
            raise SystemExit(f"kuma-init failed: {result.stderr}")
        return elapsed


def _line(name: str, values: list[float], target: float | None = None) -> str:
    median, worst = statistics.median(values), max(values)
    verdict = "" if target is None else ("  ok" if median <= target else f"  OVER target {target:.0f} ms")
    return f"  {name:<22} median {median:7.1f} ms   max {worst:7.1f} ms{verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    for name in ("legacy", "nft"):
        rounds = [_engine_round(Backend(name)) for _ in range(args.rounds)]
        print(f"engine, iptables-{name}, IPv4 + IPv6, {args.rounds} fresh namespaces:")
        for key in rounds[0]:
            print(_line(key, [r[key] for r in rounds], 100.0 if key.startswith("install") else None))
    init_times = [_kuma_init_round() for _ in range(args.rounds)]
    print(f"kuma-init end to end (process start → installed + validated, exit 0), {args.rounds} rounds:")
    print(_line("kuma-init", init_times, 500.0))


if __name__ == "__main__":
    main()
