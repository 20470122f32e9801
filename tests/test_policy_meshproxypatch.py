"""MeshProxyPatch with real Envoys and real traffic: a cluster's connect timeout and a removed
cluster in Envoy's config dump, an HTTP filter that adds a request header the backend sees, a
virtual host patched by JSON patches whose header the caller sees, a second proxy the policy does
not select left alone; the shared config of other proxies untouched; a patch that cannot apply
changes nothing; and `kumactl apply` refusing every invalid field."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from control_plane.policies.loading import mesh_policies
from control_plane.resources.registry import parse_resource
from control_plane.xds.generate.endpoints import EndpointIndex
from control_plane.xds.generate.snapshot import generate_snapshot
from control_plane.xds.names import CLUSTER_TYPE, LISTENER_TYPE
from labkit.waiting import eventually
from tests.support.kumactl_api import assert_refused, config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.policy_mesh import Proxy, Reply, Request, policy_mesh

pytestmark = pytest.mark.timeout(60)

HEADER_MUTATION = """\
name: envoy.filters.http.header_mutation
typedConfig:
  "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
  mutations:
    requestMutations:
    - append: {header: {key: x-patched, value: web-1}}
"""


def proxy_patch(name: str, top: dict[str, Any], *modifications: dict[str, Any]) -> dict[str, Any]:
    spec = {"targetRef": top, "default": {"appendModifications": list(modifications)}}
    return {"type": "MeshProxyPatch", "mesh": "default", "name": name, "spec": spec}


WEB_1_PATCH = proxy_patch(
    "web-1-patch",
    {"kind": "Dataplane", "name": "web-1"},
    {"cluster": {"match": {"name": "backend"}, "operation": "Patch", "value": "connectTimeout: 1.5s"}},
    {"cluster": {"match": {"name": "other", "origin": "outbound"}, "operation": "Remove"}},
    {
        "httpFilter": {
            "match": {"name": "envoy.filters.http.router", "origin": "outbound"},
            "operation": "AddBefore",
            "value": HEADER_MUTATION,
        }
    },
    {
        "virtualHost": {
            "match": {"routeConfigurationName": "outbound:backend"},
            "operation": "Patch",
            "jsonPatches": [
                {
                    "op": "add",
                    "path": "/responseHeadersToAdd/-",
                    "value": {"header": {"key": "x-route", "value": "patched"}},
                }
            ],
        }
    },
)


def echo_patched(request: Request) -> Reply:
    return Reply(body=request.headers.get("x-patched", "none").encode())


async def http_filters(proxy: Proxy, service: str) -> list[str]:
    """The HTTP filters of `proxy`'s outbound listener for `service`, as its Envoy runs them."""
    dump = await proxy.config_dump()
    for config in dump["configs"]:
        for listener in config.get("dynamic_listeners", []):
            state = listener.get("active_state", {}).get("listener", {})
            if (
                state.get("address", {}).get("socket_address", {}).get("port_value")
                == proxy.outbounds[service]
            ):
                manager = state["filter_chains"][0]["filters"][-1]["typed_config"]
                return [f["name"] for f in manager["http_filters"]]
    raise AssertionError(f"{proxy.name} has no outbound listener for {service}")


async def cluster_names(proxy: Proxy) -> set[str]:
    dump = await proxy.config_dump()
    return {
        c["cluster"]["name"] for config in dump["configs"] for c in config.get("dynamic_active_clusters", [])
    }


async def header_reaches_backend(proxy: Proxy, wanted: str) -> bool:
    response = await proxy.get("backend", "/")
    return response.status_code == 200 and response.text == wanted


async def test_patch_changes_the_selected_proxy_and_leaves_the_other_alone(
    envoy_binary: Path, tmp_path: Path
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await mesh.backend("backend-1", "backend", echo_patched)
        await mesh.backend("other-1", "other", echo_patched, protocol="tcp")
        web1 = await mesh.client("web-1", ["backend", "other"])
        web2 = await mesh.client("web-2", ["backend", "other"])
        assert (await web1.get("backend", "/")).text == "none"

        await mesh.apply(WEB_1_PATCH)
        # The HTTP filter: in web-1's config dump, and the backend sees the header it adds.
        await eventually(lambda: header_reaches_backend(web1, "web-1"), timeout=10)
        filters = await http_filters(web1, "backend")
        assert filters == ["envoy.filters.http.header_mutation", "envoy.filters.http.router"]
        # The virtual host's JSON patch: web-1's caller gets the header its route adds.
        assert (await web1.get("backend", "/")).headers.get("x-route") == "patched"
        # The cluster patch and the removed cluster, as Envoy runs them.
        assert (await web1.cluster("backend"))["connect_timeout"] == "1.500s"
        assert "other" not in await cluster_names(web1)
        with pytest.raises(Exception):  # noqa: B017 - no cluster: the TCP connection is closed
            await web1.get("other", "/", timeout=3)

        # web-2 is not selected: nothing of it changed.
        assert (await web2.cluster("backend"))["connect_timeout"] == "5s"
        assert "other" in await cluster_names(web2)
        assert await http_filters(web2, "backend") == ["envoy.filters.http.router"]
        response = await web2.get("backend", "/")
        assert response.text == "none" and "x-route" not in response.headers
        assert (await web2.get("other", "/")).status_code == 200

        # Deleting the policy gives web-1 its generated config back.
        await mesh.delete("MeshProxyPatch", "web-1-patch")
        await eventually(lambda: header_reaches_backend(web1, "none"), timeout=10)
        assert "other" in await cluster_names(web1)
        assert (await web1.cluster("backend"))["connect_timeout"] == "5s"


# --- without Envoy: the shared config, a patch that cannot apply ---------------------------------
def _dataplane(name: str, service: str, address: str) -> Any:
    inbound = [{"port": 8080, "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}]
    networking = {"address": address, "inbound": inbound, "transparentProxying": {}}
    return parse_resource({"type": "Dataplane", "mesh": "default", "name": name, "networking": networking})


def _outbound_http_filters(listener: listener_pb2.Listener) -> list[list[str]]:
    result = []
    for chain in listener.filter_chains:
        manager = hcm.HttpConnectionManager()
        chain.filters[-1].typed_config.Unpack(manager)
        result.append([f.name for f in manager.http_filters])
    return result


def test_a_patched_proxy_gets_its_own_copy_and_the_shared_config_is_untouched() -> None:
    web, backend = _dataplane("web-1", "web", "10.0.0.1"), _dataplane("backend-1", "backend", "10.0.0.2")
    patch = proxy_patch(
        "web-outbound",
        {"kind": "MeshService", "name": "web"},
        {"httpFilter": {"match": {"origin": "outbound"}, "operation": "AddFirst", "value": HEADER_MUTATION}},
        {
            "cluster": {
                "match": {"origin": "transparent"},
                "operation": "Patch",
                "value": "connectTimeout: 2s",
            }
        },
    )
    policies = mesh_policies("default", [parse_resource(patch)])
    index = EndpointIndex([web, backend])

    def generate(proxy: Any) -> Any:
        return generate_snapshot(proxy, [web, backend], None, endpoints=index, policies=policies)

    before = generate(backend)
    patched = generate(web)
    after = generate(backend)
    name = "outbound:passthrough:ipv4"
    assert (
        _outbound_http_filters(patched[LISTENER_TYPE][name])
        == [["envoy.filters.http.header_mutation", "envoy.filters.http.router"]] * 2
    )
    assert patched[CLUSTER_TYPE][name].connect_timeout.seconds == 2
    # backend-1 is not selected: it still gets the mesh's shared listener, unchanged.
    assert after[LISTENER_TYPE][name] is before[LISTENER_TYPE][name]
    assert _outbound_http_filters(after[LISTENER_TYPE][name]) == [["envoy.filters.http.router"]] * 2
    assert after[CLUSTER_TYPE][name].connect_timeout.seconds == 5


def test_a_patch_that_cannot_apply_changes_nothing_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    web, backend = _dataplane("web-1", "web", "10.0.0.1"), _dataplane("backend-1", "backend", "10.0.0.2")
    patch = proxy_patch(
        "half-broken",
        {"kind": "Mesh"},
        {"cluster": {"match": {"name": "backend"}, "operation": "Patch", "value": "connectTimeout: 2s"}},
        {
            "cluster": {
                "match": {"name": "backend"},
                "operation": "Patch",
                "jsonPatches": [{"op": "replace", "path": "/healthChecks/0/timeout", "value": "1s"}],
            }
        },
    )
    policies = mesh_policies("default", [parse_resource(patch)])
    with caplog.at_level(logging.WARNING):
        resources = generate_snapshot(web, [web, backend], None, policies=policies)
    assert resources[CLUSTER_TYPE]["backend"].connect_timeout.seconds == 5  # the first one undone too
    assert (
        "MeshProxyPatch half-broken not applied to the proxy of inbound:10.0.0.1:8080: "
        "appendModifications[1].cluster: jsonPatches[0] (replace /healthChecks/0/timeout): "
        "the path does not exist"
    ) in caplog.text


INVALID = """\
type: MeshProxyPatch
mesh: default
name: bad
spec:
  targetRef: {kind: MeshGateway, name: edge}
  default:
    appendModifications:
    - cluster:
        match: {name: backend, origin: prometheus}
        operation: Patch
        value: "conectTimeout: 1s"
    - cluster:
        operation: Add
        value: "connectTimeout: 1s"
    - listener:
        match: {tags: {kuma.io/service: web}}
        operation: Replace
    - httpFilter:
        operation: AddBefore
        value: "name: envoy.filters.http.buffer"
    - networkFilter:
        match: {name: envoy.filters.network.tcp_proxy, listenerTags: {a: b}}
        operation: Patch
        value: "name: x"
        jsonPatches: [{op: add, path: /statPrefix, value: a}]
    - virtualHost:
        match: {name: x}
        operation: Remove
        value: "name: x"
    - httpFilter:
        match: {name: envoy.filters.http.router}
        operation: Patch
        jsonPatches:
        - {op: test, path: /a}
        - {op: move, path: /a}
        - {op: remove, path: /}
        - {op: add, path: a, value: 1}
    - {}
    - virtualHost: {operation: Remove}
    - cluster: {operation: Patch, value: "connectTimeout: soon", extra: 1}
    - httpFilter:
        operation: AddLast
        value: |
          name: f
          typedConfig: {"@type": type.googleapis.com/envoy.nope.Missing}
"""


def test_kumactl_apply_names_every_invalid_field_and_stores_nothing(
    config_file: Path,  # noqa: F811 - the fixture
) -> None:
    mods = "spec.default.appendModifications"
    CLUSTER = "not a valid envoy.config.cluster.v3.Cluster"  # noqa: N806
    HTTP_FILTER = "not a valid envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter"  # noqa: N806
    causes = (
        ("spec.targetRef.kind", "kind 'MeshGateway' is not supported as the top-level targetRef"),
        (f"{mods}[0].cluster.match.origin", "unknown origin 'prometheus'; the origins of this control plane"),
        (
            f"{mods}[0].cluster.value",
            f'{CLUSTER}: Message type "envoy.config.cluster.v3.Cluster" has no field named "conectTimeout"',
        ),
        (f"{mods}[1].cluster.value", "the Cluster to add needs a name"),
        (f"{mods}[2].listener.match.tags", "listeners here carry no tags"),
        (f"{mods}[2].listener.operation", "unknown value 'Replace'; expected 'Add', 'Remove' or 'Patch'"),
        (f"{mods}[3].httpFilter.match.name", "must be set for operation AddBefore"),
        (f"{mods}[4].networkFilter.match.listenerTags", "listeners here carry no tags"),
        (f"{mods}[5].virtualHost.value", "must not be set for operation Remove"),
        (f"{mods}[6].httpFilter.jsonPatches[0].op", "unknown value 'test'"),
        (f"{mods}[6].httpFilter.jsonPatches[1].from", "must be set for op move"),
        (f"{mods}[6].httpFilter.jsonPatches[2].path", "the root cannot be removed"),
        (f"{mods}[6].httpFilter.jsonPatches[3].path", "'a' is not a JSON pointer"),
        (
            f"{mods}[7]",
            "exactly one of cluster, listener, networkFilter, httpFilter, virtualHost must be set",
        ),
        (f"{mods}[8].virtualHost.match", "field is required"),
        (f"{mods}[9].cluster.value", f"{CLUSTER}: Failed to parse connectTimeout field"),
        (f"{mods}[9].cluster.extra", "unknown field"),
        (f"{mods}[10].httpFilter.value", f"{HTTP_FILTER}: Can not find message descriptor by type_url"),
    )
    assert_refused(config_file, INVALID, causes, "meshproxypatches")
    empty = "type: MeshProxyPatch\nmesh: default\nname: empty\nspec:\n  default: {appendModifications: []}\n"
    assert_refused(config_file, empty, [(f"{mods}", "must not be empty")], "meshproxypatches")


def test_kumactl_round_trips_a_valid_policy(config_file: Path) -> None:  # noqa: F811 - the fixture
    assert kumactl(config_file, "apply", "-f", "-", stdin=yaml.safe_dump(WEB_1_PATCH)).exit_code == 0
    shown = kumactl(config_file, "get", "meshproxypatch", "web-1-patch", "-m", "default", "-o", "yaml")
    assert yaml.safe_load(shown.output)["spec"] == WEB_1_PATCH["spec"]
