"""xDS generation: golden files for typical Dataplanes, Envoy's own validation, cache versions.

Rewrite the golden files after an intended change with `UPDATE_GOLDEN=1 pytest tests/test_xds_generate.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from control_plane.resources.dataplane import Dataplane
from control_plane.xds.cache import Packer, build_snapshot
from control_plane.xds.generate.endpoints import EndpointIndex
from control_plane.xds.generate.protocol import common_protocol
from control_plane.xds.generate.snapshot import Resources, generate_snapshot
from control_plane.xds.names import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    InvalidNodeId,
    parse_node_id,
    short_type,
    stat_prefix,
)
from tests.envoy_validate import assert_envoy_accepts

GOLDEN = Path(__file__).parent / "golden" / "xds"


def dp(
    name: str, address: str, inbound: list[dict[str, Any]], outbound: list[dict[str, Any]] = (), **net: Any
) -> Dataplane:
    networking = {"address": address, "inbound": inbound, "outbound": list(outbound), **net}
    doc = {"type": "Dataplane", "mesh": "default", "name": name, "networking": networking}
    return Dataplane.model_validate(doc)


def svc(service: str, protocol: str | None = None, **tags: str) -> dict[str, str]:
    result = {"kuma.io/service": service, **tags}
    if protocol:
        result["kuma.io/protocol"] = protocol
    return result


# The rest of the mesh: `backend` has two HTTP endpoints, `db` one TCP endpoint, `mixed` HTTP + TCP.
MESH = [
    dp("backend-1", "10.0.0.1", [{"port": 8080, "tags": svc("backend", "http", version="v1")}]),
    dp(
        "backend-2",
        "10.0.0.2",
        [{"port": 8080, "tags": svc("backend", "http", version="v2")}],
        advertisedAddress="192.168.0.2",
    ),
    dp("db-1", "10.0.0.3", [{"port": 5432, "address": "10.0.1.3", "tags": svc("db")}]),
    dp("mixed-1", "10.0.0.4", [{"port": 7000, "tags": svc("mixed", "http")}]),
    dp("mixed-2", "10.0.0.5", [{"port": 7000, "tags": svc("mixed", "tcp")}]),
]

CASES = {
    "tcp_inbound": dp("redis-1", "10.0.0.9", [{"port": 6379, "tags": svc("redis")}]),
    "http_inbound_http_outbound": dp(
        "web-1",
        "10.0.0.10",
        [{"port": 8080, "tags": svc("web", "http")}],
        [{"port": 10001, "tags": svc("backend")}],
    ),
    "multiple_inbounds_custom_service_ports": dp(
        "multi-1",
        "10.0.0.11",
        [
            {"port": 9000, "servicePort": 19000, "tags": svc("api", "http")},
            {
                "port": 9001,
                "servicePort": 19001,
                "serviceAddress": "127.0.0.2",
                "tags": svc("grpc-api", "grpc"),
            },
            {"port": 9002, "address": "10.0.0.12", "tags": svc("metrics-tcp", "kafka")},
        ],
    ),
    "outbounds_zero_one_two_endpoints": dp(
        "client-1",
        "10.0.0.13",
        [{"port": 8000, "tags": svc("client")}],
        [
            {"port": 10000, "tags": svc("nobody")},
            {"port": 10001, "tags": svc("db")},
            {"port": 10002, "address": "127.0.0.5", "tags": svc("backend")},
            {"port": 10003, "tags": svc("mixed")},
        ],
    ),
}


def to_json(resources: Resources) -> dict[str, dict[str, Any]]:
    return {
        short_type(type_url): {
            name: json_format.MessageToDict(message, preserving_proto_field_name=True)
            for name, message in sorted(named.items())
        }
        for type_url, named in sorted(resources.items())
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_config_matches_golden_file(case: str) -> None:
    dataplane = CASES[case]
    resources = generate_snapshot(dataplane, [*MESH, dataplane], None)
    got = json.dumps(to_json(resources), indent=2, sort_keys=True)
    path = GOLDEN / f"{case}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got + "\n")
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1 to create it"
    assert got + "\n" == path.read_text(), f"{case}: generated config differs from {path}"


def test_kuma_names_and_endpoints() -> None:
    resources = generate_snapshot(CASES["outbounds_zero_one_two_endpoints"], MESH, None)
    assert sorted(resources[LISTENER_TYPE]) == [
        "inbound:10.0.0.13:8000",
        "outbound:127.0.0.1:10000",
        "outbound:127.0.0.1:10001",
        "outbound:127.0.0.1:10003",
        "outbound:127.0.0.5:10002",
    ]
    assert sorted(resources[CLUSTER_TYPE]) == ["backend", "db", "localhost:8000", "mixed", "nobody"]
    backend = resources[ENDPOINT_TYPE]["backend"]
    addresses = [e.endpoint.address.socket_address.address for e in backend.endpoints[0].lb_endpoints]
    assert addresses == ["10.0.0.1", "192.168.0.2"]  # advertisedAddress wins over address
    assert not resources[ENDPOINT_TYPE]["nobody"].endpoints
    assert stat_prefix("outbound:127.0.0.5:10002") == "outbound_127_0_0_5_10002"


def test_protocol_inference() -> None:
    assert common_protocol([]) == "tcp"
    assert common_protocol(["http", "http"]) == "http"
    assert common_protocol(["http2", "grpc"]) == "http2"
    assert common_protocol(["http", "grpc"]) == "http"
    assert common_protocol(["http", "tcp"]) == "tcp"


def test_node_id_splits_on_first_dot() -> None:
    assert parse_node_id("default.web-1.eu.example") == ("default", "web-1.eu.example")
    with pytest.raises(InvalidNodeId, match="<mesh>.<name>"):
        parse_node_id("nodot")


def test_snapshot_version_follows_content_only() -> None:
    web = CASES["http_inbound_http_outbound"]
    first = build_snapshot(generate_snapshot(web, MESH, None))
    again = build_snapshot(generate_snapshot(web, MESH, None))
    assert first.versions() == again.versions()
    grown = [*MESH, dp("backend-3", "10.0.0.30", [{"port": 8080, "tags": svc("backend", "http")}])]
    changed = build_snapshot(generate_snapshot(web, grown, None))
    assert changed.get(ENDPOINT_TYPE).version != first.get(ENDPOINT_TYPE).version
    assert changed.get(LISTENER_TYPE).version == first.get(LISTENER_TYPE).version


def test_load_assignment_is_serialized_once_per_mesh() -> None:
    index, packer = EndpointIndex(MESH), Packer()
    snapshots = [
        build_snapshot(generate_snapshot(CASES[c], MESH, None, endpoints=index), packer)
        for c in ("http_inbound_http_outbound", "outbounds_zero_one_two_endpoints")
    ]
    first, second = (s.get(ENDPOINT_TYPE).resources["backend"] for s in snapshots)
    assert first is second


def test_real_envoy_accepts_the_generated_config(envoy_binary: Path, tmp_path: Path) -> None:
    resources: Resources = {}
    for dataplane in CASES.values():
        for type_url, named in generate_snapshot(dataplane, MESH, None).items():
            resources.setdefault(type_url, {}).update(named)
    assert_envoy_accepts(envoy_binary, resources, tmp_path / "bootstrap.json")
