"""MeshRetry with real Envoy and real traffic (HTTP retries turning failures into successes, TCP
connect attempts skipping a dead instance), validation through `kumactl apply`, and the initial
`mesh-retry-all-<mesh>` of a new Mesh."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from labkit.ports import free_port
from labkit.waiting import eventually
from tests.support.kumactl_api import assert_refused, config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.policy_mesh import Proxy, Reply, Request, policy_mesh

pytestmark = pytest.mark.timeout(120)

BACKEND = {"kind": "MeshService", "name": "backend"}


def retry_policy(name: str, default: dict[str, Any], to: dict[str, Any] = BACKEND) -> dict[str, Any]:
    spec = {"to": [{"targetRef": to, "default": default}]}
    return {"type": "MeshRetry", "mesh": "default", "name": name, "spec": spec}


class FailsFirst:
    """An app failing the first `failures` requests of each `x-case` with `status`, then 200."""

    def __init__(self, failures: int, status: int) -> None:
        self.failures, self.status = failures, status
        self.seen: collections.Counter[str] = collections.Counter()

    def __call__(self, request: Request) -> Reply:
        case = request.headers.get("x-case", "")
        self.seen[case] += 1
        if self.seen[case] <= self.failures:
            return Reply(self.status, b"failing")
        return Reply(200, f"ok on attempt {self.seen[case]}".encode())


async def call(proxy: Proxy, case: str) -> httpx.Response:
    return await proxy.get("backend", "/", headers={"x-case": case})


async def retries(proxy: Proxy) -> int:
    return (await proxy.stats("cluster.backend.upstream_rq_retry")).get(
        "cluster.backend.upstream_rq_retry", 0
    )


async def test_retries_turn_two_failures_into_a_success(envoy_binary: Path, tmp_path: Path) -> None:
    app = FailsFirst(failures=2, status=503)
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await mesh.backend("backend-1", "backend", app)
        web = await mesh.client("web-1", ["backend"])
        assert (await call(web, "no-policy")).status_code == 503  # no MeshRetry: no retries
        assert app.seen["no-policy"] == 1

        await mesh.apply(retry_policy("backend-3", {"http": {"numRetries": 3}}))
        response = await call(web, "three")  # 503 is a gateway error: retried by default
        assert (response.status_code, response.text) == (200, "ok on attempt 3")
        assert app.seen["three"] == 3
        assert await retries(web) == 2

        await mesh.apply(retry_policy("backend-3", {"http": {"numRetries": 1}}))
        response = await call(web, "one")
        assert (response.status_code, response.text) == (503, "failing")
        assert app.seen["one"] == 2  # the request and one retry
        assert await retries(web) == 3


async def test_status_codes_in_retry_on_and_numretries_zero(envoy_binary: Path, tmp_path: Path) -> None:
    app = FailsFirst(failures=1, status=500)
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await mesh.backend("backend-1", "backend", app)
        web = await mesh.client("web-1", ["backend"])
        # 500 is not among the default conditions (gateway-error, connect-failure, refused-stream).
        await mesh.apply(retry_policy("all", {"http": {"numRetries": 2}}, to={"kind": "Mesh"}))
        assert (await call(web, "default-conditions")).status_code == 500

        await mesh.apply(retry_policy("backend-500", {"http": {"retryOn": ["500"]}}))  # merged: 2 retries
        response = await call(web, "status-code")
        assert (response.status_code, response.text) == (200, "ok on attempt 2")

        await mesh.apply(retry_policy("backend-500", {"http": {"numRetries": 0, "retryOn": [500]}}))
        assert (await call(web, "off")).status_code == 500 and app.seen["off"] == 1
        assert "retry_policy" not in str(await active_listeners(web))


async def active_listeners(proxy: Proxy) -> list[dict[str, Any]]:
    """The listeners Envoy serves now (not the old ones still draining)."""
    dump = await proxy.config_dump()
    listeners = next(c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump"))
    return [entry["active_state"]["listener"] for entry in listeners.get("dynamic_listeners", [])]


def dead_instance(name: str, service: str, protocol: str) -> dict[str, Any]:
    """A Dataplane of `service` whose inbound port nobody listens on: connections are refused."""
    inbound = {"port": free_port(), "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol}}
    return {
        "type": "Dataplane",
        "mesh": "default",
        "name": name,
        "networking": {"address": "127.0.0.1", "inbound": [inbound]},
    }


async def tcp_outcomes(proxy: Proxy, count: int) -> list[int | str]:
    """HTTP status of `count` requests, each on its own connection, or the error's name."""
    outcomes: list[int | str] = []
    for _ in range(count):
        try:
            outcomes.append((await proxy.get("backend", "/", timeout=5)).status_code)
        except httpx.HTTPError as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


EXCEEDED = "cluster.backend.upstream_cx_connect_attempts_exceeded"


async def test_tcp_connect_attempts_skip_a_dead_instance(envoy_binary: Path, tmp_path: Path) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await mesh.backend("backend-1", "backend", lambda _r: Reply(200, b"alive"), protocol="tcp")
        await mesh.apply(dead_instance("backend-dead", "backend", "tcp"))
        web = await mesh.client("web-1", ["backend"])
        members = "cluster.backend.membership_total"
        await eventually(lambda: _stat_is(web, members, 2), timeout=10)
        # Round robin over a live and a dead instance, one attempt per connection: every worker
        # alternates, so some connections reach the dead one and are closed unanswered.
        outcomes = await tcp_outcomes(web, 10)
        assert 200 in outcomes and any(o != 200 for o in outcomes), outcomes
        exceeded = await _stat(web, EXCEEDED)
        assert exceeded == len([o for o in outcomes if o != 200]) > 0

        await mesh.apply(retry_policy("backend-tcp", {"tcp": {"maxConnectAttempt": 3}}))
        assert "'max_connect_attempts': 3" in str(await active_listeners(web))
        failed_before = await _stat(web, "cluster.backend.upstream_cx_connect_fail")
        outcomes = await tcp_outcomes(web, 10)
        assert outcomes == [200] * 10
        assert await _stat(web, EXCEEDED) == exceeded
        # The dead instance was still tried, and the next attempt went to the live one.
        assert await _stat(web, "cluster.backend.upstream_cx_connect_fail") > failed_before


async def _stat(proxy: Proxy, name: str) -> int:
    return (await proxy.stats(name)).get(name, 0)


async def _stat_is(proxy: Proxy, name: str, value: int) -> bool:
    return await _stat(proxy, name) == value


INVALID = """\
type: MeshRetry
mesh: default
name: bad
spec:
  to:
  - targetRef: {kind: MeshSubset, tags: {version: v1}}
    default:
      tcp: {maxConnectAttempt: 0}
      http:
        numRetries: -1
        perTryTimeout: soon
        backOff: {}
        rateLimitedBackOff: {resetHeaders: [{name: Retry-After, format: Minutes}]}
        retryOn: [gateway-error, "503", 999]
        retriableRequestHeaders: [{name: x-a, type: Present, value: "yes"}]
        hostSelection: [{predicate: OmitHostsWithTags}]
        retries: 3
      grpc: {retryOn: [Unavailable, reset]}
  - targetRef: {kind: Mesh}
    default: {}
"""


def test_kumactl_apply_names_every_invalid_field_and_stores_nothing(
    config_file: Path,  # noqa: F811 - the fixture
) -> None:
    to0 = "spec.to[0]"
    causes = (
        (
            f"{to0}.targetRef.kind",
            "kind 'MeshSubset' is not supported in 'to'; supported kinds: Mesh, MeshService",
        ),
        (f"{to0}.default.tcp.maxConnectAttempt", "Input should be greater than 0"),
        (f"{to0}.default.http.numRetries", "Input should be greater than or equal to 0"),
        (f"{to0}.default.http.perTryTimeout", "'soon' is not a duration"),
        (f"{to0}.default.http.backOff", "at least one of 'baseInterval', 'maxInterval' has to be defined"),
        (f"{to0}.default.http.rateLimitedBackOff.resetHeaders[0].name", "'Retry-After' is not a header name"),
        (
            f"{to0}.default.http.rateLimitedBackOff.resetHeaders[0].format",
            "unknown value 'Minutes'; expected 'Seconds' or 'UnixTimestamp'",
        ),
        (f"{to0}.default.http.retryOn[0]", "unknown item 'gateway-error' (did you mean 'GatewayError'?)"),
        (f"{to0}.default.http.retryOn[2]", "unknown item '999'"),
        (f"{to0}.default.http.retriableRequestHeaders[0].value", "must not be set with type Present"),
        (
            f"{to0}.default.http.hostSelection[0].tags",
            "OmitHostsWithTags needs the tags of the hosts to skip",
        ),
        (f"{to0}.default.http.retries", "unknown field"),
        (f"{to0}.default.grpc.retryOn[1]", "unknown value 'reset'; expected 'Canceled', 'DeadlineExceeded'"),
        ("spec.to[1].default", "at least one of 'tcp', 'http', 'grpc' has to be defined"),
    )
    assert_refused(config_file, INVALID, causes, "meshretries")


def test_backoff_below_base_interval_is_refused(config_file: Path, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "backoff.yaml"
    path.write_text(
        yaml.safe_dump(
            retry_policy("backoff", {"grpc": {"backOff": {"baseInterval": "1s", "maxInterval": "100ms"}}})
        )
    )
    result = kumactl(config_file, "apply", "-f", str(path))
    assert result.exit_code == 1
    assert (
        "spec.to[0].default.grpc.backOff.maxInterval: '100ms' must not be less than baseInterval ('1s')"
        in (result.output)
    )


def meshes_retries(config: Path, mesh: str) -> list[str]:
    listed = kumactl(config, "get", "meshretries", "--mesh", mesh, "-o", "json")
    assert listed.exit_code == 0, listed.output
    return [item["name"] for item in yaml.safe_load(listed.output)["items"]]


def test_a_new_mesh_gets_mesh_retry_all_unless_skipped(config_file: Path, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "meshes.yaml"
    path.write_text(
        "type: Mesh\nname: shop\n---\ntype: Mesh\nname: lab\nskipCreatingInitialPolicies: [MeshRetry]\n"
    )
    result = kumactl(config_file, "apply", "-f", str(path))
    assert result.exit_code == 0, result.output
    assert meshes_retries(config_file, "shop") == ["mesh-retry-all-shop"]
    assert meshes_retries(config_file, "lab") == []
    shown = kumactl(config_file, "get", "meshretry", "mesh-retry-all-shop", "--mesh", "shop", "-o", "yaml")
    default = yaml.safe_load(shown.output)["spec"]["to"][0]["default"]
    assert default["tcp"] == {"maxConnectAttempt": 5}
    assert default["http"] == {
        "numRetries": 5,
        "perTryTimeout": "16s",
        "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"},
    }
    assert default["grpc"] == default["http"]
