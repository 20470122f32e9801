"""MeshCircuitBreaker with real Envoy and real traffic (connection limits overflowing, outlier
detection ejecting a failing instance, limits on an inbound), validation through `kumactl apply`,
and the initial `mesh-circuit-breaker-all-<mesh>` of a new Mesh."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from labkit.waiting import eventually
from tests.support.kumactl_api import assert_refused, config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.policy_mesh import Proxy, Reply, Request, policy_mesh

pytestmark = pytest.mark.timeout(120)

BACKEND = {"kind": "MeshService", "name": "backend"}
ONE_AT_A_TIME = {"connectionLimits": {"maxConnections": 1, "maxPendingRequests": 1, "maxRequests": 1}}


def breaker(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "MeshCircuitBreaker", "mesh": "default", "name": name, "spec": spec}


class Gate:
    """An app whose answers wait until the test opens the gate: requests stay in flight as long
    as a test step needs, without guessing a delay."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.received = 0

    async def __call__(self, _request: Request) -> Reply:
        self.received += 1
        await self.opened.wait()
        return Reply(200, b"through")


def call(proxy: Proxy) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(proxy.get("backend", "/"))


async def stat(proxy: Proxy, name: str) -> int:
    return (await proxy.stats(name)).get(name, 0)


async def stat_is(proxy: Proxy, name: str, value: int) -> bool:
    return await stat(proxy, name) == value


def overloaded(response: httpx.Response) -> bool:
    """Envoy refused the request itself because a circuit breaker was open."""
    return response.status_code == 503 and response.headers.get("x-envoy-overloaded") == "true"


async def one_in_flight_one_waiting_then_refusals(
    gate: Gate, caller: Proxy, limited: Proxy, cluster: str
) -> None:
    """With one connection, one request and one pending request allowed on `cluster` of `limited`
    (a single-worker Envoy, so it sees the requests in the order they are sent): the first call
    reaches the app, the second waits for the connection (a second one would overflow it), the
    next ones are refused at once; once the app answers, the first two succeed."""
    first = call(caller)
    await eventually(lambda: gate.received == 1)
    second = call(caller)
    await eventually(lambda: stat_is(limited, f"{cluster}.upstream_rq_pending_active", 1))
    assert await stat(limited, f"{cluster}.upstream_cx_overflow") == 1
    refused = [await caller.get("backend", "/") for _ in range(2)]
    assert all(map(overloaded, refused)), [(r.status_code, r.headers) for r in refused]
    assert await stat(limited, f"{cluster}.upstream_rq_pending_overflow") == 2
    assert not first.done() and not second.done()
    gate.opened.set()
    assert [(r.status_code, r.text) for r in await asyncio.gather(first, second)] == [(200, "through")] * 2
    assert gate.received == 2


async def test_connection_limits_make_concurrent_requests_overflow(
    envoy_binary: Path, tmp_path: Path
) -> None:
    gate = Gate()
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await mesh.backend("backend-1", "backend", gate)
        web = await mesh.client("web-1", ["backend"], concurrency=1)
        calls = [call(web) for _ in range(4)]
        await eventually(lambda: gate.received == 4)  # no policy: Envoy's limits (1024) let all in
        gate.opened.set()
        assert [r.status_code for r in await asyncio.gather(*calls)] == [200] * 4

        await mesh.apply(breaker("one-at-a-time", {"to": [{"targetRef": BACKEND, "default": ONE_AT_A_TIME}]}))
        gate.opened.clear()
        gate.received = 0
        await one_in_flight_one_waiting_then_refusals(gate, web, web, "cluster.backend")
        assert await stat(web, "cluster.backend.circuit_breakers.default.remaining_rq") == 1


async def test_outlier_detection_ejects_the_failing_instance(envoy_binary: Path, tmp_path: Path) -> None:
    answered: collections.Counter[str] = collections.Counter()

    def instance(name: str, status: int) -> Any:
        def handler(_request: Request) -> Reply:
            answered[name] += 1
            return Reply(status, name.encode())

        return handler

    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await mesh.backend("backend-1", "backend", instance("healthy", 200))
        await mesh.backend("backend-2", "backend", instance("broken", 503))
        web = await mesh.client("web-1", ["backend"])
        outlier = {
            "baseEjectionTime": "1m",  # longer than the test: it stays ejected
            "maxEjectionPercent": 50,
            "healthyPanicThreshold": 0,  # one host of two left must not mean "use them all"
            "detectors": {"totalFailures": {"consecutive": 3}},
        }
        await mesh.apply(
            breaker("eject", {"to": [{"targetRef": BACKEND, "default": {"outlierDetection": outlier}}]})
        )

        async def ejected() -> bool:
            await web.get("backend", "/")
            return await stat(web, "cluster.backend.outlier_detection.ejections_active") == 1

        await eventually(ejected, timeout=10)
        assert answered["broken"] >= 3
        assert await stat(web, "cluster.backend.outlier_detection.ejections_enforced_total") == 1
        assert await stat(web, "cluster.backend.outlier_detection.ejections_enforced_consecutive_5xx") == 1
        broken_before = answered["broken"]
        responses = [await web.get("backend", "/") for _ in range(20)]
        assert [(r.status_code, r.text) for r in responses] == [(200, "healthy")] * 20
        assert answered["broken"] == broken_before


async def test_inbound_rules_limit_calls_into_the_application(envoy_binary: Path, tmp_path: Path) -> None:
    gate = Gate()
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        backend, app = await mesh.backend("backend-1", "backend", gate, concurrency=1)
        web = await mesh.client("web-1", ["backend"])
        spec = {
            "targetRef": {"kind": "Dataplane", "name": "backend-1"},
            "rules": [{"default": ONE_AT_A_TIME}],
        }
        await mesh.apply(breaker("backend-inbound", spec))
        # The caller's side has no limit; the backend's Envoy refuses what its app may not take.
        await one_in_flight_one_waiting_then_refusals(gate, web, backend, f"cluster.localhost_{app.port}")
        assert await stat(web, "cluster.backend.upstream_rq_pending_overflow") == 0


INVALID = """\
type: MeshCircuitBreaker
mesh: default
name: bad
spec:
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      connectionLimits: {maxConnections: 0, maxPending: 3}
      outlierDetection:
        interval: 0s
        maxEjectionPercent: 101
        healthyPanicThreshold: lots
        detectors:
          totalFailures: {}
          successRate: {standardDeviationFactor: "-1"}
  - targetRef: {kind: Mesh}
    default: {outlierDetection: {baseEjectionTime: 10s}}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {}
"""


def test_kumactl_apply_names_every_invalid_field_and_stores_nothing(
    config_file: Path,  # noqa: F811 - the fixture
) -> None:
    limits, outlier = "spec.to[0].default.connectionLimits", "spec.to[0].default.outlierDetection"
    causes = (
        (f"{limits}.maxConnections", "Input should be greater than 0"),
        (f"{limits}.maxPending", "unknown field"),
        (f"{outlier}.interval", "'0s' must be greater than zero"),
        (f"{outlier}.maxEjectionPercent", "Input should be less than or equal to 100"),
        (f"{outlier}.healthyPanicThreshold", "'lots' is not a number"),
        (f"{outlier}.detectors.totalFailures.consecutive", "field is required"),
        (f"{outlier}.detectors.successRate.standardDeviationFactor", "'-1' must be greater than zero"),
        (
            "spec.to[1].default.outlierDetection.detectors",
            "is required (which failures eject a host), unless 'disabled' is true",
        ),
        (
            "spec.from[0].targetRef.kind",
            "kind 'MeshService' is not supported in 'from'; supported kinds: Mesh",
        ),
        ("spec.from[0].default", "at least one of 'connectionLimits', 'outlierDetection' has to be defined"),
    )
    assert_refused(config_file, INVALID, causes, "meshcircuitbreakers")


def breakers(config: Path, mesh: str) -> list[str]:
    listed = kumactl(config, "get", "meshcircuitbreakers", "--mesh", mesh, "-o", "json")
    assert listed.exit_code == 0, listed.output
    return [item["name"] for item in yaml.safe_load(listed.output)["items"]]


def test_a_new_mesh_gets_mesh_circuit_breaker_all_unless_skipped(
    config_file: Path,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    path = tmp_path / "meshes.yaml"
    path.write_text(
        "type: Mesh\nname: shop\nskipCreatingInitialPolicies: [MeshRetry]\n---\n"
        "type: Mesh\nname: lab\nskipCreatingInitialPolicies: [MeshCircuitBreaker]\n"
    )
    result = kumactl(config_file, "apply", "-f", str(path))
    assert result.exit_code == 0, result.output
    assert breakers(config_file, "shop") == ["mesh-circuit-breaker-all-shop"]
    assert breakers(config_file, "lab") == []
    shown = kumactl(
        config_file,
        "get",
        "meshcircuitbreaker",
        "mesh-circuit-breaker-all-shop",
        "--mesh",
        "shop",
        "-o",
        "yaml",
    )
    spec = yaml.safe_load(shown.output)["spec"]
    assert spec["targetRef"] == {"kind": "Mesh"}
    assert spec["to"] == [
        {
            "targetRef": {"kind": "Mesh"},
            "default": {
                "connectionLimits": {
                    "maxConnections": 1024,
                    "maxPendingRequests": 1024,
                    "maxRequests": 1024,
                    "maxRetries": 3,
                }
            },
        }
    ]
