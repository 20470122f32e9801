"""MeshTrafficPermission: validation, Kuma's merge of `from` rules, the RBAC it becomes, kumactl
and the API serving it, and a store change reaching a connected proxy's snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from control_plane.resources.registry import InvalidResource, parse_resource, to_document
from control_plane.store.base import ResourceKey, dataplane_key, mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.generate.permissions import caller_actions
from control_plane.xds.generate.rbac import rbac_rules
from control_plane.xds.names import LISTENER_TYPE
from control_plane.xds.reconciler import Reconciler
from labkit.waiting import eventually
from tests.support.kumactl_api import config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.xds_cases import POLICY_YAML

MESH = {"kind": "Mesh"}


def service(name: str) -> dict[str, str]:
    return {"kind": "MeshService", "name": name}


def mtp_doc(name: str, target: dict[str, str], *rules: tuple[dict[str, str], str]) -> dict[str, Any]:
    spec = {"targetRef": target, "from": [{"targetRef": t, "default": {"action": a}} for t, a in rules]}
    return {"type": "MeshTrafficPermission", "mesh": "default", "name": name, "spec": spec}


def mtp(name: str, target: dict[str, str], *rules: tuple[dict[str, str], str]) -> Any:
    return parse_resource(mtp_doc(name, target, *rules))


def causes(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidResource) as caught:
        parse_resource(doc)
    return [(c["field"], c["message"]) for c in caught.value.causes]


# --- validation ---------------------------------------------------------------------------------
def test_valid_policy_round_trips_in_kumas_form() -> None:
    doc = mtp_doc("deny-web", service("backend"), (service("web"), "Deny"))
    assert to_document(parse_resource(doc)) == doc


def test_invalid_policies_name_the_field_at_fault() -> None:
    doc = mtp_doc("p", {"kind": "MeshSubset"}, ({"kind": "MeshService"}, "Deny"), (MESH, "Block"))
    assert causes(doc) == [
        ("spec.targetRef.kind", "unknown kind 'MeshSubset'; supported kinds: Mesh, MeshService"),
        ("spec.from[0].targetRef.name", "is required with kind MeshService"),
        (
            "spec.from[1].default.action",
            "unknown action 'Block'; supported actions: Allow, Deny, AllowWithShadowDeny",
        ),
    ]
    assert causes(mtp_doc("p", {"kind": "Mesh", "name": "x"}, (MESH, "Allow"))) == [
        ("spec.targetRef.name", "must not be set with kind Mesh")
    ]
    assert causes(mtp_doc("p", MESH)) == [
        ("spec.from", "needs at least one entry (a policy without callers selects nothing)")
    ]


# --- merging (pure) -----------------------------------------------------------------------------
def actions(
    policies: list[Any], protected: str, callers: tuple[str, ...] = ("web", "other")
) -> dict[str, str]:
    merged = caller_actions(policies, protected)
    assert merged is not None
    return {caller: merged.action(caller) for caller in callers}


def test_no_policy_selecting_the_service_means_no_rules() -> None:
    assert caller_actions([], "backend") is None
    assert caller_actions([mtp("p", service("db"), (MESH, "Deny"))], "backend") is None


def test_callers_no_rule_names_are_denied_once_a_policy_applies() -> None:
    only_web = [mtp("p", service("backend"), (service("web"), "Allow"))]
    assert actions(only_web, "backend") == {"web": "Allow", "other": "Deny"}


def test_service_targeted_policy_overrides_mesh_wide_whatever_the_names() -> None:
    policies = [
        mtp("a-specific", service("backend"), (service("web"), "Deny")),
        mtp("z-mesh-wide", MESH, (MESH, "Allow")),
    ]
    assert actions(policies, "backend") == {"web": "Deny", "other": "Allow"}
    assert actions(policies, "db") == {"web": "Allow", "other": "Allow"}


def test_among_equally_specific_policies_the_later_name_wins() -> None:
    policies = [mtp("b", MESH, (MESH, "Deny")), mtp("a", MESH, (MESH, "Allow"), (service("web"), "Allow"))]
    assert actions(policies, "backend") == {"web": "Deny", "other": "Deny"}


def test_inside_a_policy_the_service_entry_overrides_the_mesh_entry() -> None:
    policy = mtp("p", MESH, (service("web"), "Deny"), (MESH, "Allow"))
    assert actions([policy], "backend") == {"web": "Deny", "other": "Allow"}


# --- RBAC ------------------------------------------------------------------------------------------
def principal_names(principals: Any) -> list[str]:
    return [p.authenticated.principal_name.exact for p in principals]


def test_deny_one_caller_allows_everyone_else_by_identity() -> None:
    merged = caller_actions([mtp("p", MESH, (MESH, "Allow"), (service("web"), "Deny"))], "backend")
    assert merged is not None
    rules, shadow = rbac_rules(merged, "default")
    assert rules.action == rbac_pb2.RBAC.ALLOW and shadow is None
    (principal,) = rules.policies["MeshTrafficPermission"].principals
    assert principal_names(principal.not_id.or_ids.ids) == ["spiffe://default/web"]


def test_deny_all_is_an_allow_rule_without_policies_and_shadow_deny_is_only_counted() -> None:
    merged = caller_actions([mtp("p", MESH, (MESH, "Deny"))], "backend")
    assert merged is not None
    rules, shadow = rbac_rules(merged, "default")
    assert rules.action == rbac_pb2.RBAC.ALLOW and not rules.policies and shadow is None
    merged = caller_actions([mtp("p", MESH, (service("web"), "AllowWithShadowDeny"))], "backend")
    assert merged is not None
    rules, shadow = rbac_rules(merged, "default")
    assert principal_names(rules.policies["MeshTrafficPermission"].principals) == ["spiffe://default/web"]
    assert shadow is not None and shadow.action == rbac_pb2.RBAC.DENY
    assert principal_names(shadow.policies["MeshTrafficPermission"].principals) == ["spiffe://default/web"]


# --- kumactl and the API ---------------------------------------------------------------------------
def test_kumactl_apply_get_delete(config_file: Path, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "mtp.yaml"
    path.write_text(POLICY_YAML)
    result = kumactl(config_file, "apply", "-f", str(path))
    assert result.exit_code == 0, result.output
    assert result.output == 'created MeshTrafficPermission "deny-web-to-backend" in mesh "default"\n'
    table = kumactl(config_file, "get", "meshtrafficpermissions").output.splitlines()
    assert table[1].split()[:2] == ["default", "deny-web-to-backend"]
    one = kumactl(config_file, "get", "meshtrafficpermission", "deny-web-to-backend", "-o", "yaml").output
    assert yaml.safe_load(one)["spec"] == yaml.safe_load(POLICY_YAML)["spec"]
    result = kumactl(config_file, "delete", "meshtrafficpermission", "deny-web-to-backend")
    assert result.exit_code == 0, result.output
    listed = json.loads(kumactl(config_file, "get", "meshtrafficpermissions", "-o", "json").output)
    assert listed["total"] == 0


def test_kumactl_apply_of_an_invalid_policy_names_the_field(config_file: Path, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "bad.yaml"
    path.write_text(POLICY_YAML.replace("action: Deny", "action: Reject"))
    result = kumactl(config_file, "apply", "-f", str(path))
    assert result.exit_code == 1
    assert "spec.from[0].default.action" in result.output and "Reject" in result.output
    assert "Traceback" not in result.output


# --- store change → snapshot ------------------------------------------------------------------------
NODE = "default.backend-1"
BACKEND = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "backend-1",
    "networking": {
        "address": "127.0.0.1",
        "inbound": [{"port": 20001, "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}],
    },
}
MTLS = {"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}


def spec_of(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in to_document(parse_resource(doc)).items() if k not in ("type", "mesh", "name")}


@contextlib.asynccontextmanager
async def reconciling(store: MemoryStore) -> AsyncIterator[SnapshotCache]:
    cache = SnapshotCache()
    reconciler = Reconciler(store, cache)
    task = asyncio.create_task(reconciler.run())
    reconciler.track(NODE, {"workdir": "/var/run/kuma-dp/backend-1", "dataplane.resource": "{}"})
    try:
        yield cache
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def http_filters(cache: SnapshotCache) -> list[str]:
    snapshot = cache.get(NODE)
    if snapshot is None or snapshot.get(LISTENER_TYPE) is None:
        return []
    listener = listener_pb2.Listener.FromString(
        snapshot.get(LISTENER_TYPE).resources["inbound:127.0.0.1:20001"].value
    )
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return [f.name for f in manager.http_filters]


async def test_policy_put_and_deleted_reaches_the_proxy_snapshot() -> None:
    store = MemoryStore()
    store.upsert(mesh_key("default"), MTLS)
    store.upsert(dataplane_key("backend-1"), spec_of(BACKEND))
    key = ResourceKey("MeshTrafficPermission", "default", "deny-web-to-backend")
    async with reconciling(store) as cache:
        await eventually(lambda: http_filters(cache) == ["envoy.filters.http.router"])
        store.upsert(key, spec_of(yaml.safe_load(POLICY_YAML)))
        await eventually(
            lambda: http_filters(cache) == ["envoy.filters.http.rbac", "envoy.filters.http.router"]
        )
        store.delete(key)
        await eventually(lambda: http_filters(cache) == ["envoy.filters.http.router"])


async def test_mtls_proxy_without_workdir_gets_nothing_and_is_told_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    store.upsert(mesh_key("default"), MTLS)
    store.upsert(dataplane_key("backend-1"), spec_of(BACKEND))
    cache = SnapshotCache()
    reconciler = Reconciler(store, cache)
    task = asyncio.create_task(reconciler.run())
    reconciler.track(NODE, {})
    try:
        await eventually(lambda: "sent no `workdir`" in caplog.text)
        assert cache.get(NODE) is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
