"""A workload exposing its own Prometheus metrics, for the MeshMetric tests and benchmark:
`python -m tests.support.metrics_app PORT` serves `/metrics` (prometheus_client's server) with
`demo_app_hits_total` = 7 and `demo_app_temperature_celsius` = 21.5."""

from __future__ import annotations

import sys
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

APP_COUNTER = "demo_app_hits_total"
APP_GAUGE = "demo_app_temperature_celsius"


def main() -> None:
    registry = CollectorRegistry()
    Counter("demo_app_hits", "Hits the demo app counted.", registry=registry).inc(7)
    Gauge("demo_app_temperature_celsius", "A gauge of the demo app.", registry=registry).set(21.5)
    start_http_server(int(sys.argv[1]), addr="127.0.0.1", registry=registry)
    threading.Event().wait()


if __name__ == "__main__":
    main()
