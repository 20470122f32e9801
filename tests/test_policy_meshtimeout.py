"""MeshTimeout with real Envoy and real traffic, Kuma's merge order through the engine, and
validation through `kumactl apply` (the field named, nothing stored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.policies.loading import mesh_policies
from control_plane.policies.registry import BY_KIND
from control_plane.resources.registry import parse_resource
from tests.support.kumactl_api import assert_refused, config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.policy_mesh import Reply, Request, policy_mesh, timed

pytestmark = pytest.mark.timeout(120)

TIMEOUT = BY_KIND["MeshTimeout"]


def timeout_policy(
    name: str, to: dict[str, Any], default: dict[str, Any], top: dict[str, Any] | None = None
) -> str:
    spec: dict[str, Any] = {"to": [{"targetRef": to, "default": default}]}
    if top is not None:
        spec["targetRef"] = top
    return yaml.safe_dump({"type": "MeshTimeout", "mesh": "default", "name": name, "spec": spec})


MESH = {"kind": "Mesh"}
BACKEND = {"kind": "MeshService", "name": "backend"}


def slow_app(request: Request) -> Reply:
    """/slow takes 3 s, anything else answers at once."""
    return Reply(
        body=b"slow" if request.path == "/slow" else b"fast", delay_s=3.0 if request.path == "/slow" else 0
    )


async def test_request_timeout_cuts_a_slow_request_at_one_second(envoy_binary: Path, tmp_path: Path) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await mesh.backend("backend-1", "backend", slow_app)
        web = await mesh.client("web-1", ["backend"])
        response, elapsed = await timed(web.get("backend", "/slow"))
        assert response.status_code == 200 and response.text == "slow"  # no policy: 15 s default

        await mesh.apply(timeout_policy("backend-1s", BACKEND, {"http": {"requestTimeout": "1s"}}))
        response, elapsed = await timed(web.get("backend", "/slow"))
        assert response.status_code == 504 and response.text == "upstream request timeout"
        assert 0.9 <= elapsed < 2.5, elapsed
        assert (await web.get("backend", "/")).text == "fast"
        stats = await web.stats("cluster.backend.upstream_rq_timeout")
        assert stats["cluster.backend.upstream_rq_timeout"] >= 1

        await mesh.delete("MeshTimeout", "backend-1s")
        assert (await web.get("backend", "/slow")).status_code == 200


async def test_merge_order_smaller_name_wins_and_meshservice_beats_mesh(
    envoy_binary: Path, tmp_path: Path
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await mesh.backend("backend-1", "backend", slow_app)
        web = await mesh.client("web-1", ["backend"])
        # Two policies on the same target: "a" (1 s) has the smaller name and wins over "b" (10 s).
        await mesh.apply(
            timeout_policy("b-generous", MESH, {"http": {"requestTimeout": "10s"}}),
            timeout_policy("a-strict", MESH, {"http": {"requestTimeout": "1s"}}),
        )
        assert (await web.get("backend", "/slow")).status_code == 504
        # A MeshService entry beats a Mesh entry whatever the names: "z" (10 s for backend) wins.
        await mesh.apply(timeout_policy("z-backend", BACKEND, {"http": {"requestTimeout": "10s"}}))
        assert (await web.get("backend", "/slow")).status_code == 200


async def test_inbound_timeout_from_rules_applies_on_the_backend_side(
    envoy_binary: Path, tmp_path: Path
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        backend, _ = await mesh.backend("backend-1", "backend", slow_app)
        web = await mesh.client("web-1", ["backend"])
        rules = {
            "type": "MeshTimeout",
            "mesh": "default",
            "name": "backend-inbound",
            "spec": {
                "targetRef": {"kind": "Dataplane", "name": "backend-1"},
                "rules": [{"default": {"http": {"requestTimeout": "1s"}}}],
            },
        }
        await mesh.apply(rules)
        response, elapsed = await timed(web.get("backend", "/slow"))
        assert response.status_code == 504 and elapsed < 2.5
        inbound = await backend.stats("http.inbound_127_0_0_1_")
        assert any(name.endswith(".downstream_rq_5xx") and value >= 1 for name, value in inbound.items())


def test_a_dataplane_targeted_policy_applies_to_that_proxy_only() -> None:
    def proxy(name: str, labels: dict[str, str] | None = None) -> Any:
        doc = {"type": "Dataplane", "mesh": "default", "name": name, "labels": labels}
        doc["networking"] = {
            "address": "10.0.0.1",
            "inbound": [{"port": 80, "tags": {"kuma.io/service": name}}],
        }
        return parse_resource({k: v for k, v in doc.items() if v is not None})

    policies = mesh_policies(
        "default",
        [
            parse_resource(yaml.safe_load(timeout_policy("all", MESH, {"connectionTimeout": "3s"}))),
            parse_resource(
                yaml.safe_load(
                    timeout_policy(
                        "canary",
                        MESH,
                        {"connectionTimeout": "1s"},
                        {"kind": "Dataplane", "labels": {"canary": "yes"}},
                    )
                )
            ),
        ],
    )
    stable, canary = proxy("web-1"), proxy("web-2", {"canary": "yes"})
    stable_rules, canary_rules = policies.outbound_rules(stable), policies.outbound_rules(canary)
    assert stable_rules.conf("MeshTimeout", "backend").conf == {"connectionTimeout": "3s"}
    assert canary_rules.conf("MeshTimeout", "backend").conf == {"connectionTimeout": "1s"}
    origins = [o.name for o in canary_rules.conf("MeshTimeout", "backend").origins]
    assert origins == ["all", "canary"]  # merged lowest priority first: Mesh, then Dataplane
    assert policies.outbound_rules(proxy("web-3")) is stable_rules  # shared by proxies alike


INVALID = """\
type: MeshTimeout
mesh: default
name: bad
spec:
  targetRef: {kind: MeshGateway, name: edge}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      connectionTimeout: 0s
      idleTimeout: soon
      http: {requestTimeout: -1s}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {http: {}}
"""


def test_kumactl_apply_names_every_invalid_field_and_stores_nothing(
    config_file: Path,  # noqa: F811 - the fixture
) -> None:
    causes = (
        ("spec.targetRef.kind", "kind 'MeshGateway' is not supported as the top-level targetRef"),
        ("spec.to[0].default.connectionTimeout", "'0s' must be greater than zero"),
        ("spec.to[0].default.idleTimeout", "'soon' is not a duration"),
        ("spec.to[0].default.http.requestTimeout", "'-1s' must not be negative"),
        (
            "spec.from[0].targetRef.kind",
            "kind 'MeshService' is not supported in 'from'; supported kinds: Mesh",
        ),
        ("spec.from[0].default.http", "at least one timeout in this section should be configured"),
    )
    assert_refused(config_file, INVALID, causes, "meshtimeouts")
