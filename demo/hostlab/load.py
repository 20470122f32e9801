"""Traffic from the web host to the backends by name: run inside web's namespace as an ordinary
UID, so its DNS query goes to the agent (`backend.mesh` → the service's VIP) and every request
through web's Envoy, which balances them over the backends (mTLS to each backend's Envoy).

    python -m demo.hostlab.load --target backend.mesh:8080 [--target ...] --rate 200 --duration 3

Prints one JSON object: per backend instance that answered (the demo app says which it is; "" for
requests nobody answered), requests sent/ok, how many answers show that the backend saw the
caller's SPIFFE identity (x-forwarded-client-cert, set by its Envoy under mTLS), latencies.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time

from demo.hostlab.report import Traffic

TIMEOUT_S = 5.0


NO_ANSWER = ""  # the instance of requests no backend answered


class Target:
    def __init__(self, hostport: str, caller: str, by_instance: dict[str, Traffic]) -> None:
        host, _, port = hostport.rpartition(":")
        self.host, self.port, self.caller = host, int(port), caller
        self.conn: http.client.HTTPConnection | None = None
        self.by_instance = by_instance

    def request(self, path: str) -> None:
        started = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            body = _json(resp.read())
        except (OSError, http.client.HTTPException):
            self.by_instance.setdefault(NO_ANSWER, Traffic()).sent += 1
            self._reset()
            return
        traffic = self.by_instance.setdefault(body.get("instance", NO_ANSWER), Traffic())
        traffic.sent += 1
        traffic.latencies_ms.append((time.perf_counter() - started) * 1000)
        if resp.status == 200:
            traffic.ok += 1
            if f"URI={self.caller}" in body.get("caller", ""):
                traffic.mtls += 1
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
    parser.add_argument("--target", action="append", required=True, help="NAME:PORT (repeatable)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second in all")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds")
    parser.add_argument("--caller", default="spiffe://default/web", help="identity the backends should see")
    args = parser.parse_args()
    by_instance: dict[str, Traffic] = {}
    targets = [Target(t, args.caller, by_instance) for t in args.target]
    run(targets, args.rate, args.duration)
    print(json.dumps({instance: vars(traffic) for instance, traffic in sorted(by_instance.items())}))


if __name__ == "__main__":
    main()
