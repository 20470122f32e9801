"""Traffic from the web host to the backends by IP: run inside web's namespace as an ordinary UID,
so the transparent proxy sends every request through web's Envoy (mTLS to the backend's Envoy).

    python -m demo.hostlab.load --target 10.213.0.21:8080 [--target ...] --rate 200 --duration 3

Prints one JSON object: per target, requests sent/ok, how many answers show that the backend saw
the caller's SPIFFE identity (x-forwarded-client-cert, set by its Envoy under mTLS), latencies.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time

from demo.hostlab.report import Traffic

TIMEOUT_S = 5.0


class Target:
    def __init__(self, hostport: str, caller: str) -> None:
        host, _, port = hostport.rpartition(":")
        self.host, self.port, self.caller = host, int(port), caller
        self.conn: http.client.HTTPConnection | None = None
        self.traffic = Traffic()

    def request(self, path: str) -> None:
        self.traffic.sent += 1
        started = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            self._reset()
            return
        self.traffic.latencies_ms.append((time.perf_counter() - started) * 1000)
        if resp.status == 200:
            self.traffic.ok += 1
            if f"URI={self.caller}" in _json(body).get("caller", ""):
                self.traffic.mtls += 1
        if resp.will_close:
            self._reset()

    def _reset(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def _json(body: bytes) -> dict[str, str]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def run(targets: list[Target], rate: float, duration: float) -> None:
    """Round-robin over the targets at a fixed rate (open loop: a late request is not skipped)."""
    interval = 1.0 / rate
    start = time.monotonic()
    n = 0
    while (now := time.monotonic()) - start < duration:
        due = start + n * interval
        if due > now:
            time.sleep(due - now)
        targets[n % len(targets)].request(f"/lab/{n}")
        n += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", action="append", required=True, help="IP:PORT (repeatable)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second in all")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds")
    parser.add_argument("--caller", default="spiffe://default/web", help="identity the backends should see")
    args = parser.parse_args()
    targets = [Target(t, args.caller) for t in args.target]
    run(targets, args.rate, args.duration)
    out = {t.host: {**vars(t.traffic)} for t in targets}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
