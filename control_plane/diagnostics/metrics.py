"""The control plane's own metrics, with Kuma's names and labels where Kuma has them.

One `CpMetrics` per control plane: it owns its `CollectorRegistry` (never the process-global
default), so several control planes in one process (tests) each count their own. Components take
an optional `CpMetrics`; without one they count into a private registry nobody scrapes.

Labels are low-cardinality by construction: type URLs, operations, resource types, meshes, route
templates (never a raw path with names in it), status classes. No label carries a secret.

The client library writes counters with a `_total` suffix (`xds_responses_sent_total`), as
OpenMetrics requires; Kuma's Go client writes the bare name in the Prometheus text format.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# Kuma observes xds_generation in milliseconds (with Go's default buckets, made for seconds);
# we keep the unit and give it buckets that fit milliseconds.
GENERATION_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
PROXY_TYPE_DATAPLANE = "dataplane"
GENERATED = "generated"  # Kuma's xds_generation result for a snapshot built


class CpMetrics:
    """Every metric of one control plane, registered in `registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # --- xDS (Kuma: pkg/util/xds/stats_callbacks.go, pkg/xds/metrics) ---
        self.xds_responses_sent = Counter(
            "xds_responses_sent",
            "Number of responses sent by the server to a client",
            ["type_url"],
            registry=r,
        )
        self.xds_requests_received = Counter(
            "xds_requests_received",
            "Number of confirmations requests from a client (ACK or NACK)",
            ["type_url", "confirmation", "error_type"],
            registry=r,
        )
        self.xds_streams_active = Gauge(
            "xds_streams_active", "Number of active connections between a server and a client", registry=r
        )
        self.leader = Gauge(
            "leader",
            "1 while this control-plane instance is the leader (runs the singleton jobs)",
            registry=r,
        )
        self.xds_dataplanes_connected = Gauge(
            "xds_dataplanes_connected",
            "Dataplane proxies connected to this control plane (open ADS streams), per mesh",
            ["mesh"],
            registry=r,
        )
        self.xds_generation = Histogram(
            "xds_generation",
            "Summary of XDS Snapshot generation (milliseconds)",
            ["proxy_type", "result"],
            buckets=GENERATION_BUCKETS_MS,
            registry=r,
        )
        self.xds_generation_errors = Counter(
            "xds_generation_errors", "Counter of errors during XDS generation", registry=r
        )
        # --- store (Kuma: pkg/metrics/store/store.go) ---
        self.store = Histogram(
            "store", "Summary of Store operations (seconds)", ["operation", "resource_type"], registry=r
        )
        self.store_conflicts = Counter(
            "store_conflicts", "Counter of store conflicts while update", ["resource_type"], registry=r
        )
        # --- identity (Kuma: pkg/xds/secrets/secrets.go) ---
        self.cert_generation = Counter(
            "cert_generation", "Number of generated certificates", ["mesh"], registry=r
        )
        # --- HTTP servers (Kuma: go-http-metrics with prefixes api_server and dp_server) ---
        self.api_server_http_request_duration_seconds = Histogram(
            "api_server_http_request_duration_seconds",
            "The latency of the HTTP requests of the REST API",
            ["code", "handler", "method"],
            registry=r,
        )
        self.dp_server_http_request_duration_seconds = Histogram(
            "dp_server_http_request_duration_seconds",
            "The latency of the HTTP requests of the DP server (bootstrap, certificates)",
            ["code", "handler", "method"],
            registry=r,
        )
        ProcessCollector(registry=r)  # process_* (CPU, memory, fds), as Kuma's Go registry has

    # --- one-line hooks ---------------------------------------------------------------------
    def xds_request(self, type_url: str, version_info: str, nack: bool) -> None:
        """An ADS request: a NACK, an ACK (it names a version), or an initial request (not counted)."""
        if nack:
            self.xds_requests_received.labels(type_url, "NACK", "other").inc()
        elif version_info:
            self.xds_requests_received.labels(type_url, "ACK", "no_error").inc()
