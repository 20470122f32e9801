"""The control plane's diagnostics server end to end: the real `kuma-cp run`, a real `kuma-dp run`
with real Envoy, changes through the real `kumactl apply`; what a scraper sees on /metrics (parsed
with the Prometheus client's own parsers), /ready and /healthy."""

from __future__ import annotations

import httpx
import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from control_plane.xds.names import CLUSTER_TYPE, LISTENER_TYPE
from labkit.lab import MTLS_MESH, ControlPlaneProc, Lab, dataplane
from labkit.ports import free_port
from labkit.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

Samples = list[tuple[str, dict[str, str], float]]

MESH_TIMEOUT = {
    "type": "MeshTimeout",
    "mesh": "default",
    "name": "diag-timeout",
    "spec": {
        "targetRef": {"kind": "Mesh"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "7m"}}],
    },
}
# Valid to our validation (a Duration), refused by Envoy: a cluster's connect_timeout must be > 0.
REJECTED_PATCH = {
    "type": "MeshProxyPatch",
    "mesh": "default",
    "name": "zero-connect-timeout",
    "spec": {
        "targetRef": {"kind": "Mesh"},
        "default": {
            "appendModifications": [{"cluster": {"operation": "Patch", "value": "connectTimeout: 0s"}}]
        },
    },
}


def scrape(cp: ControlPlaneProc) -> Samples:
    resp = httpx.get(f"{cp.diagnostics_url}/metrics", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return [(s.name, s.labels, s.value) for family in parse_text(resp.text) for s in family.samples]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 if there is none)."""
    return sum(v for n, ls, v in samples if n == name and labels.items() <= ls.items())


def has(samples: Samples, name: str, **labels: str) -> bool:
    return any(n == name and labels.items() <= ls.items() for n, ls, _ in samples)


def apply(lab: Lab, cp: ControlPlaneProc, doc: dict[str, object] | str) -> None:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    res = lab.kumactl(cp, "apply", "-f", "-", input=text)
    assert res.returncode == 0, res.stderr


def test_health_and_readiness(lab: Lab) -> None:
    cp = lab.start_control_plane()
    # Polled from the start: whatever is seen before ready is 503, never another answer.
    wait_until(lambda: _ready_status(cp) == 200, timeout=30, what="/ready 200")
    assert httpx.get(f"{cp.diagnostics_url}/healthy", timeout=5).status_code == 200
    # OpenMetrics when the scraper asks for it.
    resp = httpx.get(
        f"{cp.diagnostics_url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=5,
    )
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    names = {family.name for family in parse_openmetrics(resp.text)}
    assert {"xds_responses_sent", "xds_requests_received", "store", "process_resident_memory_bytes"} <= names


def _ready_status(cp: ControlPlaneProc) -> int:
    try:
        status = httpx.get(f"{cp.diagnostics_url}/ready", timeout=2).status_code
    except httpx.TransportError:
        return 0  # not listening yet
    assert status in (200, 503)
    return status


def test_metrics_follow_a_proxy_and_changes(lab: Lab, cp: ControlPlaneProc) -> None:
    apply(lab, cp, MTLS_MESH)  # so the agent asks the built-in CA for its certificate
    app_port, inbound = free_port(), free_port()
    lab.start_app("backend", "backend-1", app_port)
    agent = lab.start_agent(cp, dataplane("backend-1", "backend", inbound, app_port))
    lab.wait_ready(agent)

    # Connected: the gauge of its mesh is 1; it was bootstrapped, certified, sent config and ACKed.
    wait_until(lambda: total(scrape(cp), "xds_dataplanes_connected", mesh="default") == 1, timeout=30)
    before = scrape(cp)
    assert total(before, "xds_streams_active") == 1
    assert (
        total(before, "dp_server_http_request_duration_seconds_count", handler="/bootstrap", code="2xx") >= 1
    )
    assert total(before, "cert_generation_total", mesh="default") >= 1
    assert total(before, "xds_responses_sent_total", type_url=LISTENER_TYPE) >= 1
    assert total(before, "xds_requests_received_total", type_url=LISTENER_TYPE, confirmation="ACK") >= 1
    assert total(before, "xds_generation_count", proxy_type="dataplane", result="generated") >= 1
    assert total(before, "xds_requests_received_total", confirmation="NACK") == 0

    # A change through the API: pushed and ACKed, stored, and the request timed by its route.
    apply(lab, cp, MESH_TIMEOUT)

    def pushed_and_acked() -> Samples | None:
        now = scrape(cp)
        sent, acks = (
            ("xds_responses_sent_total", {}),
            ("xds_requests_received_total", {"confirmation": "ACK"}),
        )
        grew = all(
            total(now, name, **labels) > total(before, name, **labels) for name, labels in (sent, acks)
        )
        return now if grew else None

    after = wait_until(pushed_and_acked, timeout=30, what="the MeshTimeout pushed and ACKed")
    assert total(after, "store_count", operation="create", resource_type="MeshTimeout") == 1
    route = {"handler": "/meshes/{mesh}/meshtimeouts/{name}", "method": "PUT"}
    assert total(after, "api_server_http_request_duration_seconds_count", code="2xx", **route) == 1
    # Never a raw path: no handler label carries the resource's name.
    assert not any("diag-timeout" in "".join(labels.values()) for _, labels, _ in after)

    # A patch our validation accepts and Envoy refuses: a NACK of the clusters.
    apply(lab, cp, REJECTED_PATCH)
    wait_until(
        lambda: (
            total(scrape(cp), "xds_requests_received_total", type_url=CLUSTER_TYPE, confirmation="NACK") >= 1
        ),
        timeout=30,
        what="a CDS NACK counted",
    )

    # Gone: the gauge of its mesh goes back to 0 (the series stays, at 0).
    agent.proc.stop()

    def disconnected() -> bool:
        now = scrape(cp)
        return has(now, "xds_dataplanes_connected", mesh="default") and (
            total(now, "xds_dataplanes_connected", mesh="default") == 0
        )

    wait_until(disconnected, timeout=30, what="the gauge of mesh default back to 0")
    assert total(scrape(cp), "xds_streams_active") == 0
