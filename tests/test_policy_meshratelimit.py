"""MeshRateLimit with real Envoy and real traffic: HTTP requests and TCP connections per interval on
the inbound side (`rules`) and the outbound side (`to`), a configured status and headers,
`disabled` lifting a limit, PERMISSIVE mTLS (one connection bucket across the inbound's two chains,
a request bucket per chain), and validation through `kumactl apply` (the field named, nothing
stored)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from labkit.waiting import eventually
from tests.support.kumactl_api import assert_refused, config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.policy_mesh import Proxy, constant, policy_mesh
from tests.support.policy_mtls import permissive_mtls

pytestmark = pytest.mark.timeout(120)

MESH = {"kind": "Mesh"}
BACKEND = {"kind": "MeshService", "name": "backend"}
FIVE_PER_10S = {"num": 5, "interval": "10s"}


def rate_limit(name: str, top: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"type": "MeshRateLimit", "mesh": "default", "name": name, "spec": {"targetRef": top, **spec}}


def inbound_rules(name: str, top: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    return rate_limit(name, top, rules=[{"default": {"local": local}}])


def outbound(name: str, to: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    return rate_limit(name, MESH, to=[{"targetRef": to, "default": {"local": local}}])


async def statuses(proxy: Proxy, service: str, times: int = 10) -> list[int]:
    """The statuses of `times` quick requests, one after the other, each on a new connection."""
    return [(await proxy.get(service)).status_code for _ in range(times)]


async def eventually_all_pass(proxy: Proxy) -> None:
    """After a change of backend's inbound, the connections web's Envoy pooled under the old filter
    chain answer once more by it (then close, as the chain drains): wait for a run that all pass."""

    async def all_pass() -> bool:
        return await statuses(proxy, "backend") == [200] * 10

    await eventually(all_pass, timeout=10, what="10 requests in a row pass")


CONFIGURED = {
    "status": 503,
    "headers": {
        "set": [{"name": "x-rate-limited", "value": "true"}],
        "add": [{"name": "x-limited-by", "value": "mesh"}],
    },
}


def http_limit(on_limit: dict[str, Any] | None) -> dict[str, Any]:
    http: dict[str, Any] = {"requestRate": FIVE_PER_10S}
    if on_limit is not None:
        http["onRateLimit"] = on_limit
    return {"http": http}


def assert_five_pass_five_refused(responses: list[httpx.Response], on_limit: dict[str, Any] | None) -> None:
    refused_with = 429 if on_limit is None else on_limit["status"]
    assert [r.status_code for r in responses] == [200] * 5 + [refused_with] * 5
    for response in responses:
        limited = response.status_code == refused_with
        assert (response.headers.get("x-rate-limited") == "true") == (limited and on_limit is not None)
        assert (response.headers.get("x-limited-by") == "mesh") == (limited and on_limit is not None)


async def raw_tcp(port: int) -> str:
    """What a raw TCP client sees when it connects and sends a request: "answered" (the app's reply
    came back through the proxies) or "closed" (the connection was closed without an answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(1024), 5)
    except ConnectionError:
        data = b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return "answered" if data.startswith(b"HTTP/1.1 200") else "closed" if not data else repr(data)


async def raw_connections(port: int, times: int) -> list[str]:
    return [await raw_tcp(port) for _ in range(times)]


# --- HTTP ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("on_limit", [None, CONFIGURED], ids=["429", "configured-status-and-headers"])
async def test_inbound_limit_refuses_the_excess_requests_and_disabled_lifts_it(
    envoy_binary: Path, tmp_path: Path, on_limit: dict[str, Any] | None
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        backend, app = await mesh.backend("backend-1", "backend", constant())
        web = await mesh.client("web-1", ["backend"])
        await mesh.apply(inbound_rules("backend-inbound", MESH, http_limit(on_limit)))

        assert_five_pass_five_refused([await web.get("backend") for _ in range(10)], on_limit)
        assert len(app.requests) == 5  # the refused ones never reached the app
        limited = await backend.stats("inbound_127_0_0_1_")
        assert sum(v for k, v in limited.items() if k.endswith("http_local_rate_limit.rate_limited")) == 5

        # A more specific policy (MeshService beats Mesh) says `disabled`: the merge lifts the limit.
        await mesh.apply(inbound_rules("backend-unlimited", BACKEND, {"http": {"disabled": True}}))
        await eventually_all_pass(web)


@pytest.mark.parametrize("on_limit", [None, CONFIGURED], ids=["429", "configured-status-and-headers"])
async def test_outbound_limit_refuses_the_excess_requests_and_disabled_lifts_it(
    envoy_binary: Path, tmp_path: Path, on_limit: dict[str, Any] | None
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        _, app = await mesh.backend("backend-1", "backend", constant())
        web = await mesh.client("web-1", ["backend"])
        await mesh.apply(outbound("web-to-backend", BACKEND, http_limit(on_limit)))

        assert_five_pass_five_refused([await web.get("backend") for _ in range(10)], on_limit)
        assert len(app.requests) == 5
        stats = await web.stats("outbound_127_0_0_1_")
        assert sum(v for k, v in stats.items() if k.endswith("http_local_rate_limit.rate_limited")) == 5

        # `disabled` for backend in a policy with a smaller name (it wins the merge) lifts it; web's
        # outbound takes each request on a new connection, so the next ones all pass.
        await mesh.apply(outbound("a-unlimited", BACKEND, {"http": {"disabled": True}}))
        assert await statuses(web, "backend") == [200] * 10


# --- TCP -----------------------------------------------------------------------------------------
async def test_inbound_connection_rate_closes_the_excess_connections(
    envoy_binary: Path, tmp_path: Path
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        backend, _ = await mesh.backend("backend-1", "backend", constant(), protocol="tcp")
        await mesh.apply(inbound_rules("backend-inbound", BACKEND, {"tcp": {"connectionRate": FIVE_PER_10S}}))

        seen = await raw_connections(backend.inbound_ports[0], 10)
        assert seen == ["answered"] * 5 + ["closed"] * 5, seen
        stats = await backend.stats("local_rate_limit.")
        assert sum(v for k, v in stats.items() if k.endswith(".rate_limited")) == 5

        await mesh.apply(inbound_rules("backend-inbound", BACKEND, {"tcp": {"disabled": True}}))
        assert await raw_connections(backend.inbound_ports[0], 10) == ["answered"] * 10


async def test_outbound_connection_rate_closes_the_excess_connections(
    envoy_binary: Path, tmp_path: Path
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await mesh.backend("backend-1", "backend", constant(), protocol="tcp")
        web = await mesh.client("web-1", ["backend"])
        await mesh.apply(
            outbound("web-to-all", MESH, {"tcp": {"connectionRate": {"num": 3, "interval": "10s"}}})
        )

        seen = await raw_connections(web.outbounds["backend"], 6)
        assert seen == ["answered"] * 3 + ["closed"] * 3, seen


# --- PERMISSIVE mTLS -----------------------------------------------------------------------------
async def test_permissive_inbound_one_connection_bucket_and_a_request_bucket_per_chain(
    envoy_binary: Path, tmp_path: Path
) -> None:
    """Mesh peers (web, over mTLS) and plaintext callers (this test, straight to the inbound) reach
    different chains of a PERMISSIVE inbound. The connection limit is shared between them; Envoy's
    HTTP limit has no such sharing, so each chain counts its own requests (docs in the plugin)."""
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await permissive_mtls(mesh, {"db-1": "db", "api-1": "api", "web-1": "web"})
        db, _ = await mesh.backend("db-1", "db", constant(), protocol="tcp")
        api, _ = await mesh.backend("api-1", "api", constant())
        web = await mesh.client("web-1", ["db", "api"])
        db_limit = {"tcp": {"connectionRate": {"num": 4, "interval": "10s"}}}
        api_limit = {"http": {"requestRate": {"num": 3, "interval": "10s"}}}
        await mesh.apply(
            inbound_rules("db", {"kind": "MeshService", "name": "db"}, db_limit),
            inbound_rules("api", {"kind": "MeshService", "name": "api"}, api_limit),
        )

        # TCP: 2 connections through web's outbound (mTLS), then 3 plaintext ones: 4 in all pass.
        assert await raw_connections(web.outbounds["db"], 2) == ["answered"] * 2
        assert await raw_connections(db.inbound_ports[0], 3) == ["answered", "answered", "closed"]

        # HTTP: 3 requests per chain: web's fourth is refused, then a plaintext caller gets its own 3.
        assert await statuses(web, "api", 4) == [200, 200, 200, 429]
        assert await statuses_direct(api.inbound_ports[0], 4) == [200, 200, 200, 429]


async def statuses_direct(port: int, times: int) -> list[int]:
    """As `statuses`, from a plaintext caller straight to an inbound's port."""
    found = []
    for _ in range(times):
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            found.append((await client.get(f"http://127.0.0.1:{port}/")).status_code)
    return found


# --- validation ----------------------------------------------------------------------------------
INVALID = """\
type: MeshRateLimit
mesh: default
name: bad
spec:
  targetRef: {kind: MeshGateway, name: edge}
  to:
  - targetRef: {kind: MeshService, name: web}
    default:
      local:
        http:
          requestRate: {num: 0, interval: 50ms}
          onRateLimit:
            status: 200
            headers:
              set: [{name: X-Upper, value: a}]
              add: [{name: x-ok, value: "b\\nc"}]
          burst: 3
        tcp: {connectionRate: {num: 5, interval: soon}}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {local: {}}
"""

INVALID_RULES = """\
type: MeshRateLimit
mesh: default
name: bad-rules
spec:
  rules:
  - matches: [{spiffeID: {type: Exact, value: "spiffe://default/web"}}]
    default: {local: {tcp: {disabled: "yes"}}}
  - default:
      local:
        http:
          onRateLimit:
            status: 418
            headers: {set: [{name: host, value: a}]}
        tcp: {}
  - default:
      local:
        http:
          onRateLimit:
            headers:
              add: [{name: x-a, value: "1"}, {name: x-a, value: "2"}]
  - default: {}
"""


def test_kumactl_apply_names_every_invalid_field_and_stores_nothing(
    config_file: Path,  # noqa: F811 - the fixture
) -> None:
    local = "spec.to[0].default.local"
    causes = (
        ("spec.targetRef.kind", "kind 'MeshGateway' is not supported as the top-level targetRef"),
        (f"{local}.http.requestRate.num", "Input should be greater than 0"),
        (f"{local}.http.requestRate.interval", "'50ms' must be greater than 50ms"),
        (f"{local}.http.onRateLimit.status", "200 is not an HTTP error status Envoy can answer with"),
        (f"{local}.http.onRateLimit.headers.set[0].name", "'X-Upper' is not a header name"),
        (f"{local}.http.onRateLimit.headers.add[0].value", "must not contain line breaks or NUL"),
        (f"{local}.http.burst", "unknown field"),
        (f"{local}.tcp.connectionRate.interval", "'soon' is not a duration"),
        (
            "spec.from[0].targetRef.kind",
            "kind 'MeshService' is not supported in 'from'; supported kinds: Mesh",
        ),
        ("spec.from[0].default.local", "at least one of 'http', 'tcp' has to be defined"),
    )
    assert_refused(config_file, INVALID, causes, "meshratelimits")
    causes = (
        ("spec.rules[0].matches", "unknown field"),
        ("spec.rules[0].default.local.tcp.disabled", "Input should be a valid boolean"),
        ("spec.rules[1].default.local.http.onRateLimit.status", "418 is not an HTTP error status"),
        ("spec.rules[1].default.local.http.onRateLimit.headers", "'host' cannot be changed on a response"),
        ("spec.rules[1].default.local.tcp", "at least one of 'disabled', 'connectionRate' has to be defined"),
        ("spec.rules[2].default.local.http.onRateLimit.headers.add", "header 'x-a' is listed more than once"),
        ("spec.rules[3].default.local", "field is required"),
    )
    assert_refused(config_file, INVALID_RULES, causes, "meshratelimits")


def test_more_than_ten_response_headers_are_refused(config_file: Path) -> None:  # noqa: F811
    headers = [{"name": f"x-h{i}", "value": "v"} for i in range(6)]
    on_limit = {"headers": {"set": headers, "add": headers}}
    doc = rate_limit(
        "many-headers", MESH, rules=[{"default": {"local": {"http": {"onRateLimit": on_limit}}}}]
    )

    causes = (
        (
            "spec.rules[0].default.local.http.onRateLimit.headers",
            "at most 10 headers in 'set' and 'add' together (Envoy's limit)",
        ),
    )
    assert_refused(config_file, yaml.safe_dump(doc), causes, "meshratelimits")
    valid = rate_limit("ok", MESH, rules=[{"default": {"local": {"http": {"requestRate": FIVE_PER_10S}}}}])
    assert kumactl(config_file, "apply", "-f", "-", stdin=yaml.safe_dump(valid)).exit_code == 0
