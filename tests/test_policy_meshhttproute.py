"""MeshHTTPRoute and MeshTCPRoute with real Envoy and real traffic: subsets by version, weights,
header filters, redirects, mirrors, regex matches, URL rewrites, a TCP route; and kumactl
refusing every invalid field."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kumactl_api import assert_refused, config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.policy_mesh import PolicyMesh, Reply, Request, policy_mesh

pytestmark = pytest.mark.timeout(120)

BACKEND = {"kind": "MeshService", "name": "backend"}


def echo(instance: str) -> Any:
    """An app answering with its instance name, the path and the headers it got (JSON)."""

    def handler(request: Request) -> Reply:
        body = {"instance": instance, "path": request.path, "headers": request.headers}
        return Reply(body=json.dumps(body).encode())

    return handler


def route(name: str, *rules: dict[str, Any], to: dict[str, str] = BACKEND) -> str:
    spec = {"to": [{"targetRef": to, "rules": list(rules)}]}
    return yaml.safe_dump({"type": "MeshHTTPRoute", "mesh": "default", "name": name, "spec": spec})


def prefix(value: str) -> dict[str, Any]:
    return {"path": {"type": "PathPrefix", "value": value}}


def subset(version: str, weight: int | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": version}}
    if weight is not None:
        ref["weight"] = weight
    return ref


async def two_versions(mesh: PolicyMesh) -> Any:
    await mesh.backend("backend-1", "backend", echo("v1"), version="v1")
    await mesh.backend("backend-2", "backend", echo("v2"), version="v2")
    return await mesh.client("web-1", ["backend", "audit"])


async def answers(web: Any, path: str, times: int, **kwargs: Any) -> Counter[str]:
    found: Counter[str] = Counter()
    for _ in range(times):
        response = await web.get("backend", path, **kwargs)
        assert response.status_code == 200, response.text
        found[response.json()["instance"]] += 1
    return found


async def test_a_prefix_route_picks_the_v2_instance_and_weights_split_the_rest(
    envoy_binary: Path, tmp_path: Path
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        web = await two_versions(mesh)
        assert set(await answers(web, "/", 20)) == {"v1", "v2"}  # no route: both instances
        await mesh.apply(
            route(
                "canary",
                {"matches": [prefix("/v2")], "default": {"backendRefs": [subset("v2")]}},
                {"matches": [prefix("/")], "default": {"backendRefs": [subset("v1", 80), subset("v2", 20)]}},
            )
        )
        assert await answers(web, "/v2/items", 20) == Counter({"v2": 20})
        assert (await web.get("backend", "/v2x")).json()["instance"] in ("v1", "v2")  # not the /v2 prefix
        split = await answers(web, "/", 400)
        assert set(split) == {"v1", "v2"}
        assert abs(split["v2"] / 400 - 0.20) < 0.06, split  # 20 % ± 3 standard deviations


async def test_filters_headers_redirect_rewrite_regex_and_mirror(envoy_binary: Path, tmp_path: Path) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        web = await two_versions(mesh)
        _, audit = await mesh.backend("audit-1", "audit", echo("audit"))
        await mesh.apply(
            route(
                "filters",
                {
                    "matches": [prefix("/tagged")],
                    "default": {
                        "filters": [
                            {
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {"set": [{"name": "x-route", "value": "tagged"}]},
                            },
                            {
                                "type": "ResponseHeaderModifier",
                                "responseHeaderModifier": {"add": [{"name": "x-served-by", "value": "mesh"}]},
                            },
                        ]
                    },
                },
                {
                    "matches": [{"path": {"type": "Exact", "value": "/old"}}],
                    "default": {
                        "filters": [
                            {
                                "type": "RequestRedirect",
                                "requestRedirect": {
                                    "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"},
                                    "statusCode": 301,
                                },
                            }
                        ]
                    },
                },
                {
                    "matches": [prefix("/api")],
                    "default": {
                        "backendRefs": [subset("v1")],
                        "filters": [
                            {
                                "type": "URLRewrite",
                                "urlRewrite": {
                                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}
                                },
                            }
                        ],
                    },
                },
                {
                    "matches": [{"path": {"type": "RegularExpression", "value": "^/orders/[0-9]+$"}}],
                    "default": {"backendRefs": [subset("v2")]},
                },
                {
                    "matches": [prefix("/copied")],
                    "default": {
                        "filters": [
                            {
                                "type": "RequestMirror",
                                "requestMirror": {"backendRef": {"kind": "MeshService", "name": "audit"}},
                            }
                        ]
                    },
                },
            )
        )
        tagged = await web.get("backend", "/tagged")
        assert tagged.json()["headers"]["x-route"] == "tagged" and tagged.headers["x-served-by"] == "mesh"
        moved = await web.get("backend", "/old", follow_redirects=False)
        assert moved.status_code == 301 and moved.headers["location"].endswith("/new")
        rewritten = await web.get("backend", "/api/users/7")
        assert (rewritten.json()["instance"], rewritten.json()["path"]) == ("v1", "/users/7")
        assert await answers(web, "/orders/42", 6) == Counter({"v2": 6})
        assert set(await answers(web, "/orders/latest", 20)) == {"v1", "v2"}  # the regex does not match
        before = len(audit.requests)
        for _ in range(5):
            assert (await web.get("backend", "/copied")).json()["instance"] in ("v1", "v2")
        await _eventually_true(lambda: len(audit.requests) - before == 5)
        assert {r.path for r in audit.requests[before:]} == {"/copied"}


async def _eventually_true(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.05)


def raw_tcp_exchange(port: int) -> str:
    """A raw TCP client (no HTTP library): send a request line, read what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /who HTTP/1.1\r\nHost: redis\r\n\r\n")
        data = b""
        while b"}" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


async def test_a_tcp_route_sends_raw_tcp_clients_to_the_other_service(
    envoy_binary: Path, tmp_path: Path
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await mesh.backend("redis-1", "redis", echo("redis"), protocol="tcp")
        await mesh.backend("redis-replica-1", "redis-replica", echo("replica"), protocol="tcp")
        app = await mesh.client("app-1", ["redis"])
        port = app.outbounds["redis"]
        assert '"instance": "redis"' in await asyncio.to_thread(raw_tcp_exchange, port)
        await mesh.apply(
            yaml.safe_dump(
                {
                    "type": "MeshTCPRoute",
                    "mesh": "default",
                    "name": "to-replica",
                    "spec": {
                        "to": [
                            {
                                "targetRef": {"kind": "MeshService", "name": "redis"},
                                "rules": [
                                    {
                                        "default": {
                                            "backendRefs": [{"kind": "MeshService", "name": "redis-replica"}]
                                        }
                                    }
                                ],
                            }
                        ]
                    },
                }
            )
        )
        for _ in range(5):
            assert '"instance": "replica"' in await asyncio.to_thread(raw_tcp_exchange, port)


INVALID = """\
type: MeshHTTPRoute
mesh: default
name: bad
spec:
  to:
  - targetRef: {kind: Mesh}
    rules: []
  - targetRef: {kind: MeshService, name: backend}
    hostnames: [shop.example]
    rules:
    - matches: [{path: {type: PathPrefix, value: v2/}, method: FETCH}]
      default:
        backendRefs:
        - {kind: MeshServiceSubset, name: backend}
        - {kind: MeshService, name: backend, weight: -1}
        filters:
        - {type: RequestRedirect, requestRedirect: {statusCode: 200}}
        - type: RequestMirror
          requestMirror: {backendRef: {kind: MeshServiceSubset, name: audit, tags: {v: "1"}}}
        - {type: URLRewrite, requestHeaderModifier: {set: [{name: a, value: b}]}}
    - matches:
      - path: {type: RegularExpression, value: "(?=x)"}
        headers: [{type: Present, name: X-Upper, value: "1"}]
      default:
        filters:
        - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}
"""
TCP_INVALID = """\
type: MeshTCPRoute
mesh: default
name: bad
spec:
  to:
  - targetRef: {kind: MeshService, name: redis}
    rules: [{default: {backendRefs: []}}, {default: {}}]
"""


def test_kumactl_apply_names_every_invalid_field_and_stores_nothing(
    config_file: Path,  # noqa: F811 - the fixture
) -> None:
    to0, to1 = "spec.to[0]", "spec.to[1]"
    rule0, rule1 = f"{to1}.rules[0]", f"{to1}.rules[1]"
    causes = (
        (f"{to0}.targetRef.kind", "kind 'Mesh' is not supported in 'to'; supported kinds: MeshService"),
        (f"{to0}.rules", "List should have at least 1 item"),
        (f"{to1}.hostnames", "are for MeshGateway routes; there are no gateways here"),
        (f"{rule0}.matches[0].path.value", "'v2/' must be an absolute path"),
        (f"{rule0}.matches[0].method", "unknown value 'FETCH'"),
        (f"{rule0}.default.backendRefs[0].tags", "is required with kind MeshServiceSubset"),
        (f"{rule0}.default.backendRefs[1].weight", "Input should be greater than or equal to 0"),
        (f"{rule0}.default.filters[0].requestRedirect.statusCode", "unknown value 200"),
        (
            f"{rule0}.default.filters[1].requestMirror.backendRef.kind",
            "a mirror copies requests to a whole service",
        ),
        (f"{rule0}.default.filters[2].urlRewrite", "is required with type URLRewrite"),
        (f"{rule1}.matches[0].path.value", "'(?=x)' uses look-around or back-references"),
        (f"{rule1}.matches[0].headers[0].name", "'X-Upper' is not a header name"),
    )
    assert_refused(config_file, INVALID, causes, "meshhttproutes")
    assert_refused(
        config_file, TCP_INVALID, (("spec.to[0].rules", "List should have at most 1 item"),), "meshtcproutes"
    )


ROUTED = """\
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound: [{port: 8080, tags: {kuma.io/service: web, kuma.io/protocol: http}}]
  outbound: [{port: 30001, tags: {kuma.io/service: backend}}]
---
type: MeshHTTPRoute
mesh: default
name: b-route
spec:
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: PathPrefix, value: /v2}}]
      default: {backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]}
---
type: MeshHTTPRoute
mesh: default
name: a-route
spec:
  to:
  - targetRef: {kind: MeshService, name: backend}
    rules:
    - matches: [{path: {type: Exact, value: /health}}]
      default: {}
"""


def test_routes_show_in_the_rules_inspector_merged_from_both_policies(config_file: Path) -> None:  # noqa: F811
    assert kumactl(config_file, "apply", "-f", "-", stdin=ROUTED).exit_code == 0
    body = json.loads(kumactl(config_file, "inspect", "dataplane", "web-1", "-o", "json").output)
    (routes,) = [r for r in body["rules"] if r["type"] == "MeshHTTPRoute"]
    (backend,) = routes["toRules"]
    assert backend["matchers"] == [{"key": "kuma.io/service", "value": "backend", "not": False}]
    assert [r["matches"] for r in backend["conf"]["rules"]] == [
        [{"path": {"type": "Exact", "value": "/health"}}],  # a-route: higher priority, first
        [{"path": {"type": "PathPrefix", "value": "/v2"}}],
    ]
    assert [o["name"] for o in backend["origin"]] == ["b-route", "a-route"]
