"""Benchmark: installing transparent-proxy rules in a fresh network namespace, and `kuma-init`.

Per round, a new namespace (veth to a peer, IPv4 + IPv6 addresses) for each measurement:
- install + verify through the engine (both families, one iptables-restore each), per backend,
  timed inside the namespace (what `apply.install` costs: detection, save, restore, verify);
- reinstall over an existing install (the idempotent path) and uninstall;
- `kuma-init` end to end as a process (interpreter start, install, both validation probes).

Targets (issue 4): install ≤ 100 ms, kuma-init ≤ 500 ms. Needs root.
Run alone: `.venv/bin/python -m bench.tproxy_install [--profile quick]`; all sections: `bench/run`.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Measure, Profile, Target  # noqa: E402
from bench.report import run_alone  # noqa: E402
from tests.support.netns_lab import NetnsLab  # noqa: E402
from transparent_proxy import apply  # noqa: E402
from transparent_proxy.backend import Backend  # noqa: E402
from transparent_proxy.sources import build_config, flag_layer  # noqa: E402

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


def _engine_rounds_inside(backend: Backend) -> dict[str, float]:
    """Runs inside the namespace (NetnsLab.call: a module-level function, it is pickled)."""
    first = _timed(lambda: apply.install(CONFIG, backend=backend))
    again = _timed(lambda: apply.install(CONFIG, backend=backend))
    removed = _timed(lambda: apply.uninstall(backend=backend))
    detected = _timed(lambda: apply.install(CONFIG))  # with backend detection, as the CLIs do
    return {"install": first, "reinstall": again, "uninstall": removed, "install (detect)": detected}


def _engine_round(backend: Backend) -> dict[str, float]:
    with NetnsLab("bt") as lab:
        # by its importable name: run as a script, this module is __main__, which the child lacks
        from bench.tproxy_install import _engine_rounds_inside as inside  # noqa: PLC0415

        return lab.call(_fresh(lab), inside, backend)


def _kuma_init_round() -> float:
    with NetnsLab("bk") as lab:
        app = _fresh(lab)
        started = time.perf_counter()
        result = lab.run(app, [KUMA_INIT])
        elapsed = (time.perf_counter() - started) * 1000
        if result.returncode != 0:
            raise SystemExit(f"kuma-init failed: {result.stderr}")
        return elapsed


SECTION = "transparent proxy"


def measure(profile: Profile) -> list[Measure]:
    reps = max(profile.repetitions, 3) if not profile.smoke else 1
    measures = []
    for name in ("legacy", "nft"):
        rounds = [_engine_round(Backend(name)) for _ in range(reps)]
        measures.append(
            Measure(SECTION, f"rules install + verify, iptables-{name}, IPv4 + IPv6, fresh namespace", "ms",
                    [r["install"] for r in rounds], target=Target(100),
                    note=f"reinstall {statistics.median(r['reinstall'] for r in rounds):.1f} ms, "
                    f"uninstall {statistics.median(r['uninstall'] for r in rounds):.1f} ms")
        )  # fmt: skip
    init_times = [_kuma_init_round() for _ in range(reps)]
    measures.append(
        Measure(SECTION, "kuma-init end to end (process start → installed + validated)", "ms", init_times,
                target=Target(500))
    )  # fmt: skip
    return measures


if __name__ == "__main__":
    run_alone(measure, __doc__)
