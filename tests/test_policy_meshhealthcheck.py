"""MeshHealthCheck with real Envoy and real traffic: an instance whose health endpoint fails is
marked unhealthy by the caller's Envoy and gets no traffic until it recovers; and validation
through `kumactl apply` (every bad field named, nothing stored)."""

from __future__ import annotations

import base64
from collections.abc import Awaitable
from pathlib import Path

import pytest

from labkit.waiting import eventually
from tests.support.kumactl_api import assert_refused, config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.policy_mesh import Handler, Proxy, Reply, Request, policy_mesh

pytestmark = pytest.mark.timeout(120)

# Short timings so a state change shows within a couple of seconds; noTrafficInterval too, since
# Envoy checks at that pace (60 s by default) while a cluster has never carried traffic.
HEALTH_CHECK = """\
type: MeshHealthCheck
mesh: default
name: backend-health
spec:
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      interval: 1s
      timeout: 1s
      noTrafficInterval: 1s
      unhealthyThreshold: 1
      healthyThreshold: 1
      http: {path: /health}
"""


def instance(name: str, health: dict[str, int]) -> Handler:
    """An instance answering its name, whose /health answers the status `health[name]` says."""

    def handle(request: Request) -> Reply:
        if request.path == "/health":
            return Reply(status=health[name], body=b"health")
        return Reply(body=name.encode())

    return handle


async def answered_by(client: Proxy, requests: int) -> list[str]:
    """Which instances answered `requests` calls to backend, in order."""
    names = []
    for _ in range(requests):
        response = await client.get("backend", "/")
        assert response.status_code == 200, response.text
        names.append(response.text)
    return names


async def traffic_settles_on(client: Proxy, wanted: set[str]) -> None:
    """Wait until 6 calls in a row are answered by exactly `wanted`. The /clusters flags change at
    once, but Envoy hands health changes to its worker threads in batches (the cluster's
    update_merge_window, 1 s by default), so the balancers follow up to a second later. Round
    robin makes this exact: 6 calls over 2 workers put 2+ consecutive picks on one of them, which
    alternate over every healthy instance."""

    async def settled() -> bool:
        return set(await answered_by(client, 6)) == wanted

    await eventually(settled, timeout=5)


async def test_an_unhealthy_instance_gets_no_traffic_until_it_recovers(
    envoy_binary: Path, tmp_path: Path
) -> None:
    health = {"backend-1": 200, "backend-2": 200}
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        one, _ = await mesh.backend("backend-1", "backend", instance("backend-1", health))
        two, two_app = await mesh.backend("backend-2", "backend", instance("backend-2", health))
        web = await mesh.client("web-1", ["backend"])
        await mesh.apply(HEALTH_CHECK)

        def flags() -> Awaitable[dict[str, str]]:
            return web.hosts("backend")

        both_healthy = {one.endpoint: "healthy", two.endpoint: "healthy"}
        await eventually(lambda: _equals(flags(), both_healthy), timeout=10)
        assert set(await answered_by(web, 6)) == {"backend-1", "backend-2"}
        assert any(r.path == "/health" for r in two_app.requests)  # checked through its Envoy

        health["backend-2"] = 500
        await eventually(lambda: _contains(flags(), two.endpoint, "failed_active_hc"), timeout=10)
        assert (await flags())[one.endpoint] == "healthy"
        stats = await web.stats("cluster.backend.health_check.")
        assert stats["cluster.backend.health_check.failure"] >= 1
        assert stats["cluster.backend.health_check.healthy"] == 1
        await traffic_settles_on(web, {"backend-1"})
        assert set(await answered_by(web, 20)) == {"backend-1"}

        health["backend-2"] = 200
        await eventually(lambda: _equals(flags(), both_healthy), timeout=10)
        await traffic_settles_on(web, {"backend-1", "backend-2"})


async def _equals(found: Awaitable[dict[str, str]], wanted: dict[str, str]) -> bool:
    return await found == wanted


async def _contains(found: Awaitable[dict[str, str]], endpoint: str, flag: str) -> bool:
    return flag in (await found).get(endpoint, "")


PROBE = base64.b64encode(b"GET /health HTTP/1.1\r\nHost: backend\r\n\r\n").decode()
HEALTHY = base64.b64encode(b"HTTP/1.1 200").decode()
TCP_HEALTH_CHECK = f"""\
type: MeshHealthCheck
mesh: default
name: backend-health
spec:
  to:
  - targetRef: {{kind: MeshService, name: backend}}
    default:
      interval: 1s
      timeout: 1s
      noTrafficInterval: 1s
      unhealthyThreshold: 1
      healthyThreshold: 1
      tcp:
        send: {PROBE}
        receive: [{HEALTHY}]
"""


async def test_a_tcp_check_sends_and_expects_the_decoded_bytes(envoy_binary: Path, tmp_path: Path) -> None:
    """A TCP service gets the TCP checker; `send` and `receive` are base64 of the bytes on the
    wire (here a hand-written HTTP request and the status line expected back), so the instance
    answering 500 is marked unhealthy and gets no connections until it answers 200 again."""
    health = {"backend-1": 200, "backend-2": 200}
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        one, _ = await mesh.backend("backend-1", "backend", instance("backend-1", health), protocol="tcp")
        two, _ = await mesh.backend("backend-2", "backend", instance("backend-2", health), protocol="tcp")
        web = await mesh.client("web-1", ["backend"])
        await mesh.apply(TCP_HEALTH_CHECK)
        assert "tcp_health_check" in (await web.cluster("backend"))["health_checks"][0]

        def flags() -> Awaitable[dict[str, str]]:
            return web.hosts("backend")

        both_healthy = {one.endpoint: "healthy", two.endpoint: "healthy"}
        await eventually(lambda: _equals(flags(), both_healthy), timeout=10)
        health["backend-2"] = 500
        await eventually(lambda: _contains(flags(), two.endpoint, "failed_active_hc"), timeout=10)
        await traffic_settles_on(web, {"backend-1"})
        assert set(await answered_by(web, 10)) == {"backend-1"}
        health["backend-2"] = 200
        await eventually(lambda: _equals(flags(), both_healthy), timeout=10)
        await traffic_settles_on(web, {"backend-1", "backend-2"})


INVALID = """\
type: MeshHealthCheck
mesh: default
name: bad
spec:
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      interval: 0s
      timeout: soon
      unhealthyThreshold: 0
      intervalJitterPercent: 150
      healthyPanicThreshold: "half"
      eventLogPath: hc.log
      probe: true
      http: {path: health, expectedStatuses: [200, 600]}
      tcp: {send: "not base64!"}
  - targetRef: {kind: MeshServiceSubset, name: backend, tags: {version: v1}}
    default: {interval: 10s}
"""


def test_kumactl_apply_names_every_invalid_field_and_stores_nothing(
    config_file: Path,  # noqa: F811 - the fixture
) -> None:
    default = "spec.to[0].default"
    causes = (
        (f"{default}.interval", "'0s' must be greater than zero"),
        (f"{default}.timeout", "'soon' is not a duration"),
        (f"{default}.unhealthyThreshold", "Input should be greater than 0"),
        (f"{default}.intervalJitterPercent", "Input should be less than or equal to 100"),
        (f"{default}.healthyPanicThreshold", "'half' is not a number"),
        (f"{default}.eventLogPath", "'hc.log' must be an absolute file path"),
        (f"{default}.probe", "unknown field"),
        (f"{default}.http.path", "'health' must be an HTTP path starting with '/'"),
        (f"{default}.http.expectedStatuses", "[600] are not HTTP status codes: each must be between 100 and"),
        (f"{default}.tcp.send", "'not base64!' is not base64"),
        ("spec.to[1].targetRef.kind", "kind 'MeshServiceSubset' is not supported in 'to'; supported kinds:"),
        ("spec.to[1].default", "at least one of 'http', 'tcp', 'grpc' has to be defined"),
    )  # fmt: skip
    assert_refused(config_file, INVALID, causes, "meshhealthchecks")
