"""MeshTrafficPermission: validation, Kuma's merge of `from` entries and of `rules`, the RBAC it
becomes (zero trust with mTLS: nobody without a policy), kumactl and the API serving it, and a store
change reaching a connected proxy's snapshot."""

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
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from control_plane.policies.loading import mesh_policies
from control_plane.policies.meshtrafficpermission.callers import caller_actions
from control_plane.policies.meshtrafficpermission.plugin import from_form, rules_form
from control_plane.policies.registry import BY_KIND
from control_plane.resources.registry import InvalidResource, parse_resource, to_document
from control_plane.store.base import ResourceKey, dataplane_key, mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.names import LISTENER_TYPE
from control_plane.xds.reconciler import Reconciler
from labkit.waiting import eventually
from tests.support.kumactl_api import config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.xds_cases import POLICY_YAML

MTP = BY_KIND["MeshTrafficPermission"]
MESH = {"kind": "Mesh"}


def service(name: str) -> dict[str, str]:
    return {"kind": "MeshService", "name": name}


def mtp_doc(name: str, target: dict[str, Any], *rules: tuple[dict[str, Any], str]) -> dict[str, Any]:
    spec = {"targetRef": target, "from": [{"targetRef": t, "default": {"action": a}} for t, a in rules]}
    return {"type": "MeshTrafficPermission", "mesh": "default", "name": name, "spec": spec}


def rules_doc(name: str, target: dict[str, Any], **lists: list[tuple[str, str]]) -> dict[str, Any]:
    default = {
        field: [{"spiffeID": {"type": kind, "value": value}} for kind, value in matches]
        for field, matches in lists.items()
    }
    spec = {"targetRef": target, "rules": [{"default": default}]}
    return {"type": "MeshTrafficPermission", "mesh": "default", "name": name, "spec": spec}


def mtp(name: str, target: dict[str, Any], *rules: tuple[dict[str, Any], str]) -> Any:
    return parse_resource(mtp_doc(name, target, *rules))


def causes(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidResource) as caught:
        parse_resource(doc)
    return [(c["field"], c["message"]) for c in caught.value.causes]


def dataplane(service_name: str, **extra: Any) -> Any:
    inbound = {"port": 8080, "tags": {"kuma.io/service": service_name, **extra.pop("tags", {})}}
    doc = {"type": "Dataplane", "mesh": "default", "name": f"{service_name}-1", **extra}
    doc["networking"] = {"address": "10.0.0.1", "inbound": [inbound]}
    return parse_resource(doc)


def inbound_policy(policies: list[Any], protected: str, **dataplane_fields: Any) -> Any:
    proxy = dataplane(protected, **dataplane_fields)
    return mesh_policies("default", policies).inbound_policy(MTP, proxy, proxy.networking.inbound[0])


# --- validation ---------------------------------------------------------------------------------
def test_valid_policies_round_trip_in_kumas_form() -> None:
    doc = mtp_doc("deny-web", service("backend"), (service("web"), "Deny"))
    assert to_document(parse_resource(doc)) == doc
    doc = rules_doc("r", MESH, allow=[("Exact", "spiffe://default/web")], deny=[("Prefix", "spiffe://x/")])
    assert to_document(parse_resource(doc)) == doc


def test_invalid_policies_name_the_field_at_fault() -> None:
    doc = mtp_doc(
        "p", {"kind": "MeshGateway", "name": "gw"}, ({"kind": "MeshService"}, "Deny"), (MESH, "Block")
    )
    assert causes(doc) == [
        (
            "spec.targetRef.kind",
            "kind 'MeshGateway' is not supported as the top-level targetRef; supported kinds: Mesh, "
            "Dataplane, MeshSubset, MeshService, MeshServiceSubset",
        ),
        ("spec.from[0].targetRef.name", "is required with kind MeshService"),
        (
            "spec.from[1].default.action",
            "unknown value 'Block'; expected 'Allow', 'Deny' or 'AllowWithShadowDeny'",
        ),
    ]
    assert causes(mtp_doc("p", {"kind": "Mesh", "name": "x"}, (MESH, "Allow"))) == [
        ("spec.targetRef.name", "must not be set with kind Mesh")
    ]
    assert causes(mtp_doc("p", MESH)) == [("spec", "at least one of 'from', 'rules' has to be defined")]
    subset = {"kind": "MeshSubset", "tags": {"version": "v2"}}
    assert causes(mtp_doc("p", MESH, (subset, "Allow")))[0][0] == "spec.from[0].targetRef.tags"
    assert causes(rules_doc("p", MESH)) == [
        ("spec.rules[0].default", "at least one of 'allow', 'allowWithShadowDeny', 'deny' has to be defined")
    ]
    assert causes(rules_doc("p", MESH, allow=[("Exact", "web")])) == [
        (
            "spec.rules[0].default.allow[0].spiffeID.value",
            "'web' is not a SPIFFE ID (spiffe://<trust domain>/<path>)",
        )
    ]
    both = mtp_doc("p", MESH, (MESH, "Allow"))
    both["spec"]["rules"] = rules_doc("p", MESH, allow=[("Exact", "spiffe://default/web")])["spec"]["rules"]
    assert causes(both) == [("spec.rules", "'to' and 'from' must be empty when 'rules' is defined")]


# --- the legacy `from` form, merged as Kuma merges it (pure) ------------------------------------
def actions(
    policies: list[Any], protected: str, callers: tuple[str, ...] = ("web", "other")
) -> dict[str, str]:
    merged = caller_actions(inbound_policy(policies, protected).from_entries)
    return {caller: merged.action(caller) for caller in callers}


def test_no_policy_selecting_the_inbound_means_no_entries() -> None:
    assert not inbound_policy([], "backend")
    assert not inbound_policy([mtp("p", service("db"), (MESH, "Deny"))], "backend")


def test_callers_no_entry_names_are_denied_once_a_policy_applies() -> None:
    only_web = [mtp("p", service("backend"), (service("web"), "Allow"))]
    assert actions(only_web, "backend") == {"web": "Allow", "other": "Deny"}


def test_service_targeted_policy_overrides_mesh_wide_whatever_the_names() -> None:
    policies = [
        mtp("a-specific", service("backend"), (service("web"), "Deny")),
        mtp("z-mesh-wide", MESH, (MESH, "Allow")),
    ]
    assert actions(policies, "backend") == {"web": "Deny", "other": "Allow"}
    assert actions(policies, "db") == {"web": "Allow", "other": "Allow"}


def test_among_equally_specific_policies_the_smaller_name_wins() -> None:
    policies = [mtp("b", MESH, (MESH, "Deny")), mtp("a", MESH, (MESH, "Allow"), (service("web"), "Allow"))]
    assert actions(policies, "backend") == {"web": "Allow", "other": "Allow"}
    policies = [mtp("a", MESH, (MESH, "Deny")), mtp("b", MESH, (MESH, "Allow"), (service("web"), "Allow"))]
    assert actions(policies, "backend") == {"web": "Deny", "other": "Deny"}


def test_inside_a_policy_entries_merge_in_written_order() -> None:
    later_mesh = mtp("p", MESH, (service("web"), "Deny"), (MESH, "Allow"))
    assert actions([later_mesh], "backend") == {"web": "Allow", "other": "Allow"}
    later_web = mtp("p", MESH, (MESH, "Allow"), (service("web"), "Deny"))
    assert actions([later_web], "backend") == {"web": "Deny", "other": "Allow"}


def test_dataplane_targets_by_name_labels_and_section() -> None:
    by_labels = mtp("p", {"kind": "Dataplane", "labels": {"app": "be"}}, (MESH, "Deny"))
    assert not inbound_policy([by_labels], "backend")
    assert inbound_policy([by_labels], "backend", labels={"app": "be"})
    by_name = mtp("p", {"kind": "Dataplane", "name": "backend-1", "sectionName": "8080"}, (MESH, "Deny"))
    assert inbound_policy([by_name], "backend")
    other_port = mtp("p", {"kind": "Dataplane", "name": "backend-1", "sectionName": "9090"}, (MESH, "Deny"))
    assert not inbound_policy([other_port], "backend")
    subset = mtp("p", {"kind": "MeshSubset", "tags": {"version": "v2"}}, (MESH, "Deny"))
    assert not inbound_policy([subset], "backend")
    assert inbound_policy([subset], "backend", tags={"version": "v2"})


# --- RBAC ------------------------------------------------------------------------------------------
def principal_names(principals: Any) -> list[str]:
    return [p.authenticated.principal_name.exact or p.authenticated.principal_name.prefix for p in principals]


def test_deny_one_caller_allows_everyone_else_by_identity() -> None:
    merged = caller_actions(
        inbound_policy([mtp("p", MESH, (MESH, "Allow"), (service("web"), "Deny"))], "be").from_entries
    )
    rules, shadow = from_form(merged, "default")
    assert rules.action == rbac_pb2.RBAC.ALLOW and shadow is None
    (principal,) = rules.policies["MeshTrafficPermission"].principals
    assert principal_names(principal.not_id.or_ids.ids) == ["spiffe://default/web"]


def test_deny_all_is_an_allow_rule_without_policies_and_shadow_deny_is_only_counted() -> None:
    merged = caller_actions(inbound_policy([mtp("p", MESH, (MESH, "Deny"))], "be").from_entries)
    rules, shadow = from_form(merged, "default")
    assert rules.action == rbac_pb2.RBAC.ALLOW and not rules.policies and shadow is None
    merged = caller_actions(
        inbound_policy([mtp("p", MESH, (service("web"), "AllowWithShadowDeny"))], "be").from_entries
    )
    rules, shadow = from_form(merged, "default")
    assert principal_names(rules.policies["MeshTrafficPermission"].principals) == ["spiffe://default/web"]
    assert shadow is not None and shadow.action == rbac_pb2.RBAC.DENY
    assert principal_names(shadow.policies["MeshTrafficPermission"].principals) == ["spiffe://default/web"]


def test_rules_form_deny_wins_over_any_allow_across_policies() -> None:
    policies = [
        parse_resource(rules_doc("a-allow", MESH, allow=[("Prefix", "spiffe://default/")])),
        parse_resource(rules_doc("z-deny", MESH, deny=[("Exact", "spiffe://default/web")])),
        parse_resource(rules_doc("shadow", MESH, allowWithShadowDeny=[("Exact", "spiffe://default/new")])),
    ]
    rules, shadow = rules_form(inbound_policy(policies, "backend").rules)
    (principal,) = rules.policies["MeshTrafficPermission"].principals
    allowed, not_denied = principal.and_ids.ids
    # policies merge lowest priority first: "z-deny", "shadow", then "a-allow"
    assert principal_names(allowed.or_ids.ids) == ["spiffe://default/new", "spiffe://default/"]
    assert principal_names([not_denied.not_id]) == ["spiffe://default/web"]
    assert shadow is not None and principal_names(shadow.policies["MeshTrafficPermission"].principals) == [
        "spiffe://default/new"
    ]


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


def rbac_principals(cache: SnapshotCache) -> list[str] | None:
    """The principals the inbound's RBAC allows ("not X" for a negated one); None: no RBAC yet."""
    snapshot = cache.get(NODE)
    if snapshot is None or snapshot.get(LISTENER_TYPE) is None:
        return None
    listener = listener_pb2.Listener.FromString(
        snapshot.get(LISTENER_TYPE).resources["inbound:127.0.0.1:20001"].value
    )
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    if manager.http_filters[0].name != "envoy.filters.http.rbac":
        return None
    rbac = http_rbac_pb2.RBAC()
    manager.http_filters[0].typed_config.Unpack(rbac)
    found = []
    for policy in rbac.rules.policies.values():
        for principal in policy.principals:
            negated = principal.not_id.or_ids.ids
            found += (
                [f"not {n}" for n in principal_names(negated)] if negated else principal_names([principal])
            )
    return found


async def test_policy_put_and_deleted_reaches_the_proxy_snapshot() -> None:
    store = MemoryStore()
    store.upsert(mesh_key("default"), MTLS)
    store.upsert(dataplane_key("backend-1"), spec_of(BACKEND))
    key = ResourceKey("MeshTrafficPermission", "default", "deny-web-to-backend")
    async with reconciling(store) as cache:
        # zero trust: no policy, nobody may call
        await eventually(lambda: rbac_principals(cache) == [])
        policy = mtp_doc(key.name, service("backend"), (MESH, "Allow"), (service("web"), "Deny"))
        store.upsert(key, spec_of(policy))
        await eventually(lambda: rbac_principals(cache) == ["not spiffe://default/web"])
        store.delete(key)
        await eventually(lambda: rbac_principals(cache) == [])


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
