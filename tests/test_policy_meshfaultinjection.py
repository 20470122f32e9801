"""MeshFaultInjection with real Envoy and real traffic: aborts, delays and bandwidth limits on the
inbound side (`rules`) and the outbound side (`to`), a percentage of 0 injecting nothing, faults for
particular callers told apart by their mTLS identity (PERMISSIVE: plaintext callers are unknown and
a forged x-forwarded-client-cert header changes nothing), and validation through `kumactl apply`
(the field named, nothing stored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from control_plane.policies.meshfaultinjection.plugin import Percent, fractional_percent
from labkit.waiting import eventually
from tests.support.kumactl_api import assert_refused, config_file, server  # noqa: F401 - fixtures
from tests.support.policy_mesh import Proxy, constant, policy_mesh, timed
from tests.support.policy_mtls import permissive_mtls

pytestmark = pytest.mark.timeout(120)

MESH = {"kind": "Mesh"}
BACKEND = {"kind": "MeshService", "name": "backend"}


def faults(name: str, top: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"type": "MeshFaultInjection", "mesh": "default", "name": name, "spec": {"targetRef": top, **spec}}


def inbound_rules(name: str, *http: dict[str, Any], matches: list[dict[str, Any]] | None = None) -> dict:
    rule: dict[str, Any] = {"default": {"http": list(http)}}
    if matches is not None:
        rule["matches"] = matches
    return faults(name, BACKEND, rules=[rule])


def outbound(name: str, *http: dict[str, Any]) -> dict[str, Any]:
    return faults(name, MESH, to=[{"targetRef": BACKEND, "default": {"http": list(http)}}])


def abort(status: int, percentage: int | str = 100) -> dict[str, Any]:
    return {"abort": {"httpStatus": status, "percentage": percentage}}


async def statuses(proxy: Proxy, times: int = 10) -> list[int]:
    return [(await proxy.get("backend")).status_code for _ in range(times)]


async def run_of(proxy: Proxy, status: int, times: int = 10) -> None:
    """Wait for a run of `times` requests that all get `status`. After a change of backend's
    inbound, the connections web's Envoy pooled under the old filter chain answer once more by it
    (then close, as the chain drains): what a user of any Envoy-based mesh sees."""

    async def run() -> bool:
        return await statuses(proxy, times) == [status] * times

    await eventually(run, timeout=10, what=f"{times} requests in a row get {status}")


async def direct(proxy: Proxy, **headers: str) -> tuple[httpx.Response, float]:
    """A plaintext request straight to the proxy's inbound, on a new connection: (answer, seconds)."""
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        return await timed(client.get(f"http://127.0.0.1:{proxy.inbound_ports[0]}/", headers=headers))


async def test_abort_answers_every_request_and_a_percentage_of_0_injects_nothing(
    envoy_binary: Path, tmp_path: Path
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        _, app = await mesh.backend("backend-1", "backend", constant())
        web = await mesh.client("web-1", ["backend"])

        await mesh.apply(inbound_rules("backend-inbound", abort(418)))  # backend's Envoy answers
        assert await statuses(web) == [418] * 10
        assert app.requests == []

        await mesh.apply(inbound_rules("backend-inbound", abort(418, 0)))
        await run_of(web, 200)

        reached = len(app.requests)
        await mesh.apply(outbound("web-to-backend", abort(503)))  # web's own Envoy answers
        assert await statuses(web) == [503] * 10
        assert len(app.requests) == reached
        injected = await web.stats("http.outbound_127_0_0_1_")
        assert sum(v for k, v in injected.items() if k.endswith(".fault.aborts_injected")) == 10

        await mesh.apply(outbound("web-to-backend", abort(503, "0")))
        assert await statuses(web) == [200] * 10


async def test_a_delay_shows_in_the_latency_and_the_request_still_succeeds(
    envoy_binary: Path, tmp_path: Path
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        backend, _ = await mesh.backend("backend-1", "backend", constant())
        web = await mesh.client("web-1", ["backend"])
        response, elapsed = await direct(backend)
        assert response.status_code == 200 and elapsed < 0.5, elapsed

        one_second = {"delay": {"value": "1s", "percentage": 100}}
        await mesh.apply(inbound_rules("backend-inbound", one_second))
        response, elapsed = await timed(web.get("backend"))
        assert response.status_code == 200 and response.text == "ok"
        assert 0.9 <= elapsed < 3, elapsed

        # The outbound side, from a caller that has no connection to backend yet.
        await mesh.delete("MeshFaultInjection", "backend-inbound")
        api = await mesh.client("api-1", ["backend"])
        await mesh.apply(outbound("to-backend", one_second))
        response, elapsed = await timed(api.get("backend"))
        assert response.status_code == 200 and 0.9 <= elapsed < 3, elapsed


async def test_a_bandwidth_limit_slows_a_large_response(envoy_binary: Path, tmp_path: Path) -> None:
    body = b"x" * 200_000
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        backend, _ = await mesh.backend("backend-1", "backend", constant(body))
        web = await mesh.client("web-1", ["backend"])
        response, unlimited = await direct(backend)
        assert response.content == body and unlimited < 0.5, unlimited

        # 100kbps is Envoy's limit_kbps (KiB/s), as Kuma maps it: about 2 s for 200 kB.
        limit = {"responseBandwidth": {"limit": "100kbps", "percentage": 100}}
        await mesh.apply(inbound_rules("backend-inbound", limit))
        response, limited = await timed(web.get("backend"))
        assert response.status_code == 200 and response.content == body
        assert 1.5 <= limited < 6, limited


async def test_faults_for_one_caller_by_its_mtls_identity(envoy_binary: Path, tmp_path: Path) -> None:
    """PERMISSIVE mTLS: web and api call backend over mTLS; this test calls its inbound in plaintext."""
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await permissive_mtls(mesh, {"backend-1": "backend", "web-1": "web", "api-1": "api"})
        backend, _ = await mesh.backend("backend-1", "backend", constant())
        web = await mesh.client("web-1", ["backend"])
        api = await mesh.client("api-1", ["backend"])

        # The legacy form: web's calls are aborted, nobody else's; a plaintext caller claiming to
        # be web in the header the app is told the caller by is not believed (Envoy replaces it).
        from_web = [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"http": [abort(418)]}}]
        await mesh.apply(faults("web-to-backend", BACKEND, **{"from": from_web}))
        assert await statuses(web, 3) == [418] * 3
        assert await statuses(api, 3) == [200] * 3
        forged, _ = await direct(backend, **{"x-forwarded-client-cert": "URI=spiffe://default/web"})
        assert forged.status_code == 200

        # The rules form, matching identities by prefix; with rules on the inbound, the `from`
        # entries are not used (as Kuma).
        await mesh.apply(inbound_rules("api-family", abort(503), matches=[prefix("spiffe://default/ap")]))
        await run_of(api, 503, 3)
        await run_of(web, 200, 3)
        assert (await direct(backend))[0].status_code == 200


def prefix(value: str) -> dict[str, Any]:
    return {"spiffeID": {"type": "Prefix", "value": value}}


@pytest.mark.parametrize(
    ("percentage", "numerator", "denominator"),
    [
        (0, 0, Percent.HUNDRED),
        (100, 100, Percent.HUNDRED),
        ("50", 50, Percent.HUNDRED),
        (2.5, 250, Percent.TEN_THOUSAND),
        ("12.5", 1250, Percent.TEN_THOUSAND),
        ("0.125", 1250, Percent.MILLION),
        ("33.33335", 333334, Percent.MILLION),  # rounded to a millionth, half up
    ],
)
def test_percentages_become_envoys_fractions_as_kuma_makes_them(
    percentage: int | float | str, numerator: int, denominator: int
) -> None:
    assert fractional_percent(percentage) == Percent(numerator=numerator, denominator=denominator)


INVALID = """\
type: MeshFaultInjection
mesh: default
name: bad
spec:
  targetRef: {kind: MeshGateway, name: edge}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      http:
      - abort: {httpStatus: 100, percentage: 101}
        delay: {value: 0s, percentage: "-1"}
        responseBandwidth: {limit: 10 mbps, percentage: "x"}
      - responseBandwidth: {limit: 0kbps, percentage: 1}
        delay: {value: soon, percentage: 50}
        abort: {httpStatus: 600}
      - {}
      - {abort: {httpStatus: 503, percentage: 10, grpcStatus: 14}}
"""

INVALID_RULES = """\
type: MeshFaultInjection
mesh: default
name: bad-rules
spec:
  rules:
  - matches: [{spiffeID: {type: Regex, value: "spiffe://default/.*"}}]
    default: {http: [{delay: {value: 1s}}]}
  - default: {}
"""


def test_kumactl_apply_names_every_invalid_field_and_stores_nothing(
    config_file: Path,  # noqa: F811 - the fixture
) -> None:
    http = "spec.to[0].default.http"
    causes = (
        ("spec.targetRef.kind", "kind 'MeshGateway' is not supported as the top-level targetRef"),
        (f"{http}[0].abort.httpStatus", "100 is not a status a request can be aborted with: 200-599"),
        (f"{http}[0].abort.percentage", "101 must be a percentage between 0 and 100"),
        (f"{http}[0].delay.value", "'0s' must be greater than zero"),
        (f"{http}[0].delay.percentage", "'-1' must be a percentage between 0 and 100"),
        (
            f"{http}[0].responseBandwidth.limit",
            "'10 mbps' is not a bandwidth: a whole number of kbps, Mbps or Gbps",
        ),
        (f"{http}[0].responseBandwidth.percentage", "'x' is not a number"),
        (f"{http}[1].responseBandwidth.limit", "'0kbps' must be greater than zero"),
        (f"{http}[1].delay.value", "'soon' is not a duration"),
        (f"{http}[1].abort.httpStatus", "600 is not a status a request can be aborted with"),
        (f"{http}[1].abort.percentage", "field is required"),
        (f"{http}[2]", "at least one of 'abort', 'delay', 'responseBandwidth' has to be defined"),
        (f"{http}[3].abort.grpcStatus", "unknown field"),
    )
    assert_refused(config_file, INVALID, causes, "meshfaultinjections")
    causes = (
        ("spec.rules[0].matches[0].spiffeID.type", "unknown value 'Regex'"),
        ("spec.rules[0].default.http[0].delay.percentage", "field is required"),
        ("spec.rules[1].default.http", "field is required"),
    )
    assert_refused(config_file, INVALID_RULES, causes, "meshfaultinjections")
    version = {"targetRef": {"kind": "MeshSubset", "tags": {"version": "v2"}}, "default": {"http": []}}
    only_service = yaml.safe_dump(faults("subset", MESH, **{"from": [version]}))
    causes = (
        ("spec.from[0].targetRef.tags", "callers can only be matched by their service (kuma.io/service)"),
    )
    assert_refused(config_file, only_service, causes, "meshfaultinjections")
