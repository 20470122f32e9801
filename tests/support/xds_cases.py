"""What the xDS tests generate for: the Dataplanes of the golden-file cases (`CASES`) and the rest
of their mesh (`MESH`), a MeshTrafficPermission (`POLICY_YAML`), and `to_json`, the golden files'
rendering of generated resources.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from control_plane.resources.dataplane import Dataplane
from control_plane.xds.generate.snapshot import Resources
from control_plane.xds.names import short_type


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


# web may not call backend.
POLICY_YAML = """\
type: MeshTrafficPermission
mesh: default
name: deny-web-to-backend
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {action: Deny}
"""
