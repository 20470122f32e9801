"""MeshMetric on transparent proxies, every part real (two network namespaces, kuma-cp, `kuma-dp
run` as the proxy UID, iptables redirection): a scrape of backend-1's metrics port from host a
crosses a's outbound passthrough and b's inbound redirection (15006), which hands it to the
metrics listener by its original destination; a scrape from b itself reaches it directly. No port
is excluded for it.

Needs root (namespaces, iptables); skipped otherwise, but fails when CI=true."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labkit.waiting import wait_until
from tests.support.meshmetric_lab import mesh_metric, series
from tests.support.netns_lab import require_root
from tests.support.transparent_mesh import APP_PORT, USER_UID, TransparentMesh, transparent_mesh

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

METRICS_PORT = 5670  # Kuma's default, as a user would leave it


@pytest.fixture
def mesh() -> Iterator[TransparentMesh]:
    require_root()
    with transparent_mesh() as built:
        yield built


def test_scrape_through_the_redirection(mesh: TransparentMesh) -> None:
    for _ in range(3):
        mesh.get(f"http://{mesh.b.ip}:{APP_PORT}/")
    mesh.kumactl("apply", "-f", "-", stdin=mesh_metric(METRICS_PORT, []))
    url = f"http://{mesh.b.ip}:{METRICS_PORT}/metrics"

    def scraped_from_a() -> str | None:
        res = mesh.curl(mesh.a, url, uid=USER_UID)
        return res.stdout if res.returncode == 0 and "envoy_cluster_upstream_rq_total" in res.stdout else None

    body = wait_until(scraped_from_a, timeout=30, interval=0.5)
    assert series(body, "envoy_server_live")
    # b redirects every inbound port but EXCLUDED_PORT to 15006: the scrape arrived there and was
    # handed over to the metrics listener, which counted it.
    assert mesh.b.stat(f"listener.{mesh.b.ip}_{METRICS_PORT}.downstream_cx_total") >= 1
    # From b itself (a Prometheus on the workload's host) the listener answers directly.
    local = mesh.curl(mesh.b, url, uid=USER_UID)
    assert local.returncode == 0 and series(local.stdout, "envoy_server_live"), local.stderr
