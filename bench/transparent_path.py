"""Benchmark: a request through the transparent path, against the same mesh with an explicit
outbound and against a direct call, in one run (issue 4). Printed as latency percentiles and
throughput, with ratios to the direct call. Needs root (namespaces, iptables). Not run in CI.

    .venv/bin/python -m bench.transparent_path [--requests 2000] [--seconds 5] [--connections 4]

Host a (client, web-1 transparent + web-2 with an explicit outbound) and host b (backend-1
transparent), each a network namespace; the client runs on host a as an ordinary user.
- direct:      client → b:9091 (excluded both ways: no Envoy)
- transparent: client → b:8080, redirected to web-1's Envoy (15001) → backend-1's Envoy → app
- explicit:    client → 127.0.0.1:18090 (web-2's outbound listener) → backend-1's Envoy → app
"""

from __future__ import annotations

import argparse
import json
import sys

from tests.support.transparent_mesh import APP_PORT, EXCLUDED_PORT, USER_UID, transparent_mesh

EXPLICIT_OUTBOUND_PORT = 18090

LOAD = r"""
import http.client, json, sys, threading, time
host, port, n, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
seconds = float(sys.argv[4])
def get(c):
    c.request("GET", "/bench")
    r = c.getresponse(); r.read()
    if r.status != 200: raise SystemExit(f"HTTP {r.status}")
c = http.client.HTTPConnection(host, port, timeout=5)
for _ in range(50): get(c)
lat = []
for _ in range(n):
    t = time.perf_counter(); get(c); lat.append(time.perf_counter() - t)
count = [0] * conns
def worker(i):
    w = http.client.HTTPConnection(host, port, timeout=5); end = time.monotonic() + seconds
    while time.monotonic() < end:
        get(w); count[i] += 1
threads = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
[t.start() for t in threads]; [t.join() for t in threads]
lat.sort()
p50, p99 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3
print(json.dumps({"p50_ms": p50, "p99_ms": p99, "rps": sum(count) / seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    with transparent_mesh() as mesh:
        mesh.start_agent(
            mesh.a,
            "web-2",
            "web2",
            work_dir=mesh.root / "web-2-dp",
            readiness_port=9903,
            inbound={"port": 18081, "servicePort": APP_PORT},
            outbounds={"backend": EXPLICIT_OUTBOUND_PORT},
        )
        targets = {
            "direct": (mesh.b.ip, EXCLUDED_PORT),
            "transparent": (mesh.b.ip, APP_PORT),
            "explicit": ("127.0.0.1", EXPLICIT_OUTBOUND_PORT),
        }
        results = {}
        for name, (host, port) in targets.items():
            argv = [
                sys.executable,
                "-c",
                LOAD,
                host,
                str(port),
                str(args.requests),
                str(args.seconds),
                str(args.connections),
            ]
            res = mesh.lab.run(mesh.a.ns, argv, uid=USER_UID, timeout=120)
            if res.returncode != 0:
                raise SystemExit(f"{name}: load failed: {res.stderr.strip()}")
            results[name] = json.loads(res.stdout)
    base = results["direct"]
    print(f"{'path':<12} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}   vs direct (p50, req/s)")
    for name, r in results.items():
        print(
            f"{name:<12} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['rps']:8.0f}   "
            f"{r['p50_ms'] / base['p50_ms']:.2f}x, {r['rps'] / base['rps']:.2f}x"
        )
    t, e = results["transparent"], results["explicit"]
    p50, rps = t["p50_ms"] / e["p50_ms"], t["rps"] / e["rps"]
    print(f"transparent vs explicit: p50 {p50:.2f}x, throughput {rps:.2f}x")


if __name__ == "__main__":
    main()
