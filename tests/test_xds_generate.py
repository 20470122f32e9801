"""xDS generation: golden files for typical Dataplanes, Envoy's own validation, cache versions.

Rewrite the golden files after an intended change with `UPDATE_GOLDEN=1 pytest tests/test_xds_generate.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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
    stat_prefix,
)
from tests.support.envoy_validate import assert_envoy_accepts
from tests.support.xds_cases import CASES, MESH, dp, svc, to_json

GOLDEN = Path(__file__).parent / "golden" / "xds"


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
