"""Transparent proxying in the generated config: golden files, Envoy's own validation, and the
refusal of explicit outbounds (model, REST API, /bootstrap).

Rewrite the golden files after an intended change with
`UPDATE_GOLDEN=1 pytest tests/test_xds_transparent.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import wrappers_pb2
from xds.type.matcher.v3 import ip_pb2

from control_plane.api.app import create_app
from control_plane.dns.records import MeshNames
from control_plane.dp_server.bootstrap_api import BootstrapSettings, create_bootstrap_app
from control_plane.resources.dataplane import Dataplane
from control_plane.resources.mesh import Mesh
from control_plane.resources.registry import InvalidResource, parse_resource
from control_plane.store.base import mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.xds.generate.endpoints import EndpointIndex
from control_plane.xds.generate.snapshot import ProxyContext, Resources, generate_snapshot
from control_plane.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE
from tests.support.envoy_validate import assert_envoy_accepts
from tests.support.mesh_ca import MeshCa
from tests.support.xds_cases import to_json

GOLDEN = Path(__file__).parent / "golden" / "xds"
TP = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}


def dp(name: str, address: str, inbound: list[dict[str, Any]], **net: Any) -> Dataplane:
    doc = {"type": "Dataplane", "mesh": "default", "name": name}
    doc["networking"] = {"address": address, "inbound": inbound, **net}
    return Dataplane.model_validate(doc)


def svc(service: str, protocol: str = "tcp") -> dict[str, str]:
    return {"kuma.io/service": service, "kuma.io/protocol": protocol}


def mesh(mode: str | None = None, passthrough: bool | None = None) -> Mesh:
    doc: dict[str, Any] = {"type": "Mesh", "name": "default"}
    if mode:
        doc["mtls"] = {
            "enabledBackend": "ca-1",
            "backends": [{"name": "ca-1", "type": "builtin", "mode": mode}],
        }
    if passthrough is not None:
        doc["networking"] = {"outbound": {"passthrough": passthrough}}
    return Mesh.model_validate(doc)


WEB = dp("web-1", "10.0.0.10", [{"port": 8080, "tags": svc("web", "http")}], transparentProxying=TP)
# The rest of the mesh: `backend` has two HTTP endpoints, `db` one TCP endpoint on its own address.
OTHERS = [
    dp("backend-1", "10.0.0.1", [{"port": 8080, "tags": svc("backend", "http")}], transparentProxying=TP),
    dp("backend-2", "10.0.0.2", [{"port": 8080, "tags": svc("backend", "http")}]),
    dp("db-1", "10.0.0.3", [{"port": 5432, "address": "10.0.1.3", "tags": svc("db")}]),
]
WEB_V6 = dp(
    "web-6",
    "fd00::10",
    [{"port": 8080, "tags": svc("web", "http")}],
    transparentProxying={**TP, "ipFamilyMode": "dualstack"},
)

CASES: dict[str, tuple[Dataplane, Mesh | None]] = {
    "transparent_one_inbound_two_services": (WEB, None),
    "transparent_mtls_strict": (WEB, mesh("STRICT")),
    "transparent_mtls_permissive": (WEB, mesh("PERMISSIVE")),
    "transparent_dualstack_no_passthrough": (WEB_V6, mesh(passthrough=False)),
}


def generate(dataplane: Dataplane, the_mesh: Mesh | None = None, workdir: str | None = None) -> Resources:
    others = [d for d in (WEB, *OTHERS) if d.name != dataplane.name]
    context = ProxyContext(workdir=workdir or f"/run/kuma/{dataplane.name}")  # where its SDS files are
    return generate_snapshot(dataplane, [dataplane, *others], the_mesh, context=context)


@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_config_matches_golden_file(case: str) -> None:
    got = json.dumps(to_json(generate(*CASES[case])), indent=2, sort_keys=True) + "\n"
    path = GOLDEN / f"{case}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(got)
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1 to create it"
    assert got == path.read_text(), f"{case}: generated config differs from {path}"


def test_redirect_listeners_bind_and_nothing_else_does() -> None:
    listeners = generate(WEB)[LISTENER_TYPE]
    assert sorted(listeners) == [
        "inbound:10.0.0.10:8080",
        "inbound:passthrough:ipv4",
        "outbound:passthrough:ipv4",
    ]
    bound = {name for name, lst in listeners.items() if not lst.HasField("bind_to_port")}
    assert bound == {"inbound:passthrough:ipv4", "outbound:passthrough:ipv4"}
    assert all(lst.bind_to_port.value is False for lst in listeners.values() if lst.name not in bound)
    outbound, inbound = listeners["outbound:passthrough:ipv4"], listeners["inbound:passthrough:ipv4"]
    assert (outbound.address.socket_address.port_value, inbound.address.socket_address.port_value) == (
        15001,
        15006,
    )
    assert outbound.use_original_dst.value and inbound.use_original_dst.value


def test_app_is_reached_from_127_0_0_6_and_unknown_traffic_goes_to_its_original_destination() -> None:
    clusters = generate(WEB)[CLUSTER_TYPE]
    local = clusters["localhost:8080"]  # the app's port is the inbound port
    assert local.upstream_bind_config.source_address.address == "127.0.0.6"
    for name, source in (("outbound:passthrough:ipv4", ""), ("inbound:passthrough:ipv4", "127.0.0.6")):
        cluster = clusters[name]
        assert cluster.type == cluster_pb2.Cluster.ORIGINAL_DST
        assert cluster.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
        assert cluster.upstream_bind_config.source_address.address == source
    # `web` too: the redirect listener's chain for it (shadowed by web's inbound) names its cluster.
    assert sorted(generate(WEB)[ENDPOINT_TYPE]) == ["backend", "db", "web"]


def _default_filter(resources: Resources, listener: str) -> str:
    found = resources[LISTENER_TYPE][listener]
    chain = found.default_filter_chain if found.HasField("default_filter_chain") else found.filter_chains[0]
    return chain.filters[0].name


def test_unknown_inbound_ports_pass_in_permissive_and_are_closed_in_strict() -> None:
    tcp_proxy, closed = "envoy.filters.network.tcp_proxy", "envoy.filters.network.direct_response"
    assert _default_filter(generate(WEB), "inbound:passthrough:ipv4") == tcp_proxy
    assert _default_filter(generate(WEB, mesh("PERMISSIVE")), "inbound:passthrough:ipv4") == tcp_proxy
    assert _default_filter(generate(WEB, mesh("STRICT")), "inbound:passthrough:ipv4") == closed
    assert _default_filter(generate(WEB, mesh(passthrough=False)), "outbound:passthrough:ipv4") == closed


def test_ipv6_listeners_for_an_ipv6_address_or_dual_stack() -> None:
    v6 = generate(WEB_V6)[LISTENER_TYPE]
    assert v6["outbound:passthrough:ipv6"].address.socket_address.address == "::"
    assert v6["inbound:passthrough:ipv6"].address.socket_address.port_value == 15006
    assert "outbound:passthrough:ipv4" in v6
    assert generate(WEB_V6)[CLUSTER_TYPE][
        "inbound:passthrough:ipv6"
    ].upstream_bind_config.source_address.address == ("::6")
    assert not any(name.endswith(":ipv6") for name in generate(WEB)[LISTENER_TYPE])


def outbound_routes(resources: Resources, family: str = "ipv4") -> dict[tuple[str, int], str]:
    """(destination IP, port) → the chain the outbound redirect listener picks for it."""
    listener = resources[LISTENER_TYPE][f"outbound:passthrough:{family}"]
    if not listener.HasField("filter_chain_matcher"):
        return {}
    routes = {}
    for port, on_port in listener.filter_chain_matcher.matcher_tree.exact_match_map.map.items():
        ip = ip_pb2.IPMatcher()
        on_port.matcher.matcher_tree.custom_match.typed_config.Unpack(ip)
        for matcher in ip.range_matchers:
            chain = wrappers_pb2.StringValue()
            matcher.on_match.action.typed_config.Unpack(chain)
            for cidr in matcher.ranges:
                routes[(cidr.address_prefix, int(port))] = chain.value
    assert {c.name for c in listener.filter_chains} == set(routes.values())
    return routes


def test_every_endpoint_routes_to_its_service_chain_and_narrowing_leaves_only_reachable_ones() -> None:
    """Own inbounds stay in the matcher: Envoy hands their address to the `inbound:` listener first."""
    backend = OTHERS[0]  # transparent itself, and a `backend` endpoint
    assert outbound_routes(generate(backend)) == {
        ("10.0.0.1", 8080): "outbound:backend",
        ("10.0.0.2", 8080): "outbound:backend",
        ("10.0.0.10", 8080): "outbound:web",
        ("10.0.1.3", 5432): "outbound:db",
    }
    narrowed = dp(
        "web-2",
        "10.0.0.11",
        [{"port": 8080, "tags": svc("web", "http")}],
        transparentProxying={**TP, "reachableServices": ["db"]},
    )
    assert outbound_routes(generate(narrowed)) == {("10.0.1.3", 5432): "outbound:db"}
    assert sorted(generate(narrowed)[CLUSTER_TYPE]) == [
        "db",
        "inbound:passthrough:ipv4",
        "localhost:8080",
        "outbound:passthrough:ipv4",
    ]


def test_ipv6_endpoints_route_through_the_ipv6_listener_only() -> None:
    mesh_dataplanes = [WEB_V6, *OTHERS, dp("api-6", "fd00::20", [{"port": 9000, "tags": svc("api")}])]
    resources = generate_snapshot(WEB_V6, mesh_dataplanes, None, context=ProxyContext(workdir="/w"))
    assert outbound_routes(resources, "ipv6") == {
        ("fd00::10", 8080): "outbound:web",
        ("fd00::20", 9000): "outbound:api",
    }
    assert ("fd00::20", 9000) not in outbound_routes(resources, "ipv4")


def test_vips_route_on_each_service_port_and_port_80_and_the_records_listener_is_shared() -> None:
    mesh_dataplanes = [WEB, *OTHERS]
    names = MeshNames.of({"backend": "240.0.0.1", "db": "240.0.0.2", "web": "240.0.0.3"}, "mesh", 80)
    index = EndpointIndex(mesh_dataplanes, names)
    contexts = {d.name: ProxyContext(workdir=f"/tmp/kuma-dp-{d.name}") for d in mesh_dataplanes}
    web, backend = (
        generate_snapshot(d, mesh_dataplanes, None, endpoints=index, context=contexts[d.name])
        for d in (WEB, OTHERS[0])
    )
    routes = outbound_routes(web)
    assert {k: v for k, v in routes.items() if k[0].startswith("240.")} == {
        ("240.0.0.1", 8080): "outbound:backend",
        ("240.0.0.1", 80): "outbound:backend",
        ("240.0.0.2", 5432): "outbound:db",
        ("240.0.0.2", 80): "outbound:db",
        ("240.0.0.3", 8080): "outbound:web",
        ("240.0.0.3", 80): "outbound:web",
    }
    # A service in its grace period (a VIP, no endpoint): its VIP on port 80 reaches its chain, whose
    # cluster has no endpoint (the proxy refuses the call at once).
    grace = EndpointIndex(mesh_dataplanes, MeshNames.of({**names.vips, "gone": "240.0.0.9"}, "mesh", 80))
    with_gone = generate_snapshot(WEB, mesh_dataplanes, None, endpoints=grace, context=contexts["web-1"])
    assert outbound_routes(with_gone)[("240.0.0.9", 80)] == "outbound:gone"
    assert not with_gone[ENDPOINT_TYPE]["gone"].endpoints
    records = web[LISTENER_TYPE]["kuma:dns:records"]
    assert (records.address.pipe.path, records.address.pipe.mode) == (
        "/tmp/kuma-dp-web-1/kuma-dns.sock",
        0o600,
    )
    assert records.bind_to_port.value
    # One route table (the records) for every proxy of the mesh; each its own small listener.
    assert web[ROUTE_TYPE]["kuma:dns:records"] is backend[ROUTE_TYPE]["kuma:dns:records"]
    body = web[ROUTE_TYPE]["kuma:dns:records"].virtual_hosts[0].routes[1].direct_response.body.inline_bytes
    assert body == names.records.body
    # A proxy without transparent proxying, or whose agent sent no work dir, gets no records.
    plain = dp("web-3", "10.0.0.12", [{"port": 8080, "tags": svc("web", "http")}])
    assert (
        "kuma:dns:records"
        not in generate_snapshot(plain, mesh_dataplanes, None, endpoints=index)[LISTENER_TYPE]
    )
    assert (
        "kuma:dns:records"
        not in generate_snapshot(WEB, mesh_dataplanes, None, endpoints=index)[LISTENER_TYPE]
    )
    # Nor does one whose work dir makes too long a socket path (a warning says so).
    long_dir = ProxyContext(workdir="/" + "w" * 120)
    too_long = generate_snapshot(WEB, mesh_dataplanes, None, endpoints=index, context=long_dir)
    assert "kuma:dns:records" not in too_long[LISTENER_TYPE]


def test_outbound_redirect_listener_is_built_once_per_mesh() -> None:
    """Every transparent proxy of a mesh set up alike gets the same listener object (serialized once)."""
    mesh_dataplanes = [WEB, *OTHERS]
    index = EndpointIndex(mesh_dataplanes)
    web, backend = (generate_snapshot(d, mesh_dataplanes, None, endpoints=index) for d in (WEB, OTHERS[0]))
    name = "outbound:passthrough:ipv4"
    assert web[LISTENER_TYPE][name] is backend[LISTENER_TYPE][name]
    assert (
        web[LISTENER_TYPE]["inbound:passthrough:ipv4"]
        is not backend[LISTENER_TYPE]["inbound:passthrough:ipv4"]
    )


def test_without_transparent_proxying_nothing_changes() -> None:
    plain = dp("web-3", "10.0.0.12", [{"port": 8080, "tags": svc("web", "http")}])
    resources = generate(plain)
    assert sorted(resources[LISTENER_TYPE]) == ["inbound:10.0.0.12:8080"]
    assert not resources[LISTENER_TYPE]["inbound:10.0.0.12:8080"].HasField("bind_to_port")
    assert not resources[CLUSTER_TYPE]["localhost:8080"].HasField("upstream_bind_config")


def test_real_envoy_accepts_the_generated_config(envoy_binary: Path, tmp_path: Path) -> None:
    ca = MeshCa()
    for case, (dataplane, the_mesh) in CASES.items():
        workdir = tmp_path / case
        ca.write_sds_files(workdir, dataplane.services[0])
        resources = generate(dataplane, the_mesh, workdir=str(workdir))
        assert_envoy_accepts(envoy_binary, resources, tmp_path / f"{case}.json")


# --- explicit outbounds are refused ---------------------------------------------------------------
TP_WITH_OUTBOUND = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "web-1",
    "networking": {
        "address": "127.0.0.1",
        "inbound": [{"port": 8080, "tags": svc("web")}],
        "outbound": [{"port": 10001, "tags": {"kuma.io/service": "backend"}}],
        "transparentProxying": TP,
    },
}
MESSAGE = "can't be defined when transparent proxying is enabled"


def test_model_refuses_outbounds_with_transparent_proxying() -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_resource(TP_WITH_OUTBOUND)
    assert {"field": "networking.outbound", "message": MESSAGE} in caught.value.causes


async def test_api_answers_400_naming_the_field() -> None:
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    transport = httpx.ASGITransport(app=create_app(store), client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost:5681") as client:
        response = await client.put("/meshes/default/dataplanes/web-1", json=TP_WITH_OUTBOUND)
    assert response.status_code == 400, response.text
    assert {"field": "networking.outbound", "message": MESSAGE} in response.json()["causes"]


async def test_bootstrap_answers_422_with_the_message(tmp_path: Path) -> None:
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    app = create_bootstrap_app(store, BootstrapSettings(dp_server_port=5678))
    request = {
        "mesh": "default",
        "name": "web-1",
        "proxyType": "dataplane",
        "dataplaneResource": json.dumps(TP_WITH_OUTBOUND),
        "caCert": "-----BEGIN CERTIFICATE-----\n",
        "workdir": str(tmp_path),
    }
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="https://cp.test:5678") as client:
        response = await client.post("/bootstrap", json=request)
    assert response.status_code == 422, response.text
    assert MESSAGE in response.json()["title"]
    assert {"field": "networking.outbound", "message": MESSAGE} in response.json()["causes"]
