"""MeshTrace with real Envoys, real traffic and real collectors (a Zipkin v2 JSON receiver and an
OTLP gRPC receiver): one request web → backend gives a client span from web's outbound and a
server span from backend's inbound in one trace, with the configured tags; sampling 0 sends none.
Then what the mesh-wide sharing of transparent proxies' outbounds does with it (pure), and
`kumactl apply` refusing each invalid field by name.

Envoy flushes Zipkin and OpenTelemetry spans every 5 s or every 5 spans by default
(`tracing.zipkin.flush_interval_ms` / `min_flush_spans`, `tracing.opentelemetry.*`); these Envoys
start with `min_flush_spans: 1`, so each span is sent when it ends and the tests wait for spans,
never for a flush interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from control_plane.policies.loading import mesh_policies
from control_plane.resources.dataplane import Dataplane
from control_plane.resources.registry import parse_resource
from control_plane.xds.cache import Packer, Snapshot, build_snapshot
from control_plane.xds.generate.endpoints import EndpointIndex
from control_plane.xds.generate.snapshot import ProxyContext, generate_snapshot
from control_plane.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE
from labkit.waiting import eventually
from tests.support.kumactl_api import assert_refused, config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.policy_mesh import constant, policy_mesh
from tests.support.trace_receivers import OtlpReceiver, ZipkinReceiver

pytestmark = pytest.mark.timeout(120)

FLUSH_EVERY_SPAN = {"tracing.zipkin.min_flush_spans": 1, "tracing.opentelemetry.min_flush_spans": 1}
TAGS = [
    {"name": "env", "literal": "test"},
    {"name": "user", "header": {"name": "x-user", "default": "anonymous"}},
    {"name": "marker", "header": {"name": "x-marker"}},
]


def trace_policy(backend: dict[str, Any], name: str = "trace", **default: Any) -> str:
    spec = {"targetRef": {"kind": "Mesh"}, "default": {"backends": [backend], "tags": TAGS, **default}}
    return yaml.safe_dump({"type": "MeshTrace", "mesh": "default", "name": name, "spec": spec})


def by_kind(spans: list[dict[str, Any]], marker: str) -> dict[str, dict[str, Any]]:
    return {s["kind"]: s for s in spans if s.get("tags", {}).get("marker") == marker}


async def test_zipkin_spans_of_both_proxies_share_a_trace_and_sampling_zero_sends_none(
    envoy_binary: Path, tmp_path: Path
) -> None:
    zipkin = ZipkinReceiver()
    async with zipkin.running(), policy_mesh(envoy_binary, tmp_path, FLUSH_EVERY_SPAN) as mesh:
        await mesh.backend("backend-1", "backend", constant(b"hello"))
        web = await mesh.client("web-1", ["backend"], service="web")
        backend = {"type": "Zipkin", "zipkin": {"url": zipkin.url}}

        await mesh.apply(trace_policy(backend, sampling={"overall": 0}))
        for _ in range(3):
            assert (await web.get("backend", headers={"x-marker": "unsampled"})).text == "hello"

        await mesh.apply(trace_policy(backend))  # sampling: Kuma's default, 100 %
        assert (await web.get("backend", headers={"x-marker": "alice", "x-user": "alice"})).text == "hello"
        assert (await web.get("backend", headers={"x-marker": "nobody"})).text == "hello"
        await eventually(lambda: len(zipkin.spans) >= 4, timeout=10, what="4 spans at the receiver")

        assert not zipkin.bad_requests
        assert by_kind(zipkin.spans, "unsampled") == {}  # flushed at once had there been any
        alice = by_kind(zipkin.spans, "alice")
        client, server = alice["CLIENT"], alice["SERVER"]
        assert client["localEndpoint"]["serviceName"] == "web"
        assert server["localEndpoint"]["serviceName"] == "backend"
        assert client["traceId"] == server["traceId"]
        assert client["id"] == server["id"] and server["shared"] is True  # sharedSpanContext: true
        for span in (client, server):
            assert span["tags"]["env"] == "test" and span["tags"]["user"] == "alice"
            assert span["tags"]["kuma.mesh"] == "default"
        nobody = by_kind(zipkin.spans, "nobody")
        assert {s["tags"]["user"] for s in nobody.values()} == {"anonymous"}  # the header's default
        assert nobody["CLIENT"]["traceId"] != client["traceId"]
        for proxy in (web, mesh.proxies["backend-1"]):  # 2 sampled requests, 1 span each: none before
            assert (await proxy.stats("tracing.zipkin.spans_sent"))["tracing.zipkin.spans_sent"] == 2


async def test_opentelemetry_spans_over_grpc_name_each_service_and_chain_parent_to_child(
    envoy_binary: Path, tmp_path: Path
) -> None:
    otlp = OtlpReceiver()
    async with otlp.running(), policy_mesh(envoy_binary, tmp_path, FLUSH_EVERY_SPAN) as mesh:
        await mesh.backend("backend-1", "backend", constant(b"hello"))
        web = await mesh.client("web-1", ["backend"], service="web")
        await mesh.apply(
            trace_policy({"type": "OpenTelemetry", "openTelemetry": {"endpoint": otlp.endpoint}})
        )

        response = await web.get("backend", headers={"x-marker": "otel", "x-user": "bob"})
        assert response.text == "hello"
        await eventually(lambda: len(otlp.spans) >= 2, timeout=10, what="2 spans at the OTLP receiver")

        spans = {s.kind: s for s in otlp.spans if s.attributes.get("marker") == "otel"}
        client, server = spans["SPAN_KIND_CLIENT"], spans["SPAN_KIND_SERVER"]
        assert (client.service, server.service) == ("web", "backend")
        assert client.trace_id == server.trace_id and server.parent_span_id == client.span_id
        for span in (client, server):
            assert span.attributes["env"] == "test" and span.attributes["user"] == "bob"
            assert span.attributes["kuma.mesh"] == "default"


# --- the shared outbound build (pure) ----------------------------------------------------------

TP = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}


def dataplanes() -> list[Dataplane]:
    """Six transparent proxies: web-0..2 of web, backend-0..2 of backend."""
    return [
        Dataplane.model_validate(
            {
                "type": "Dataplane",
                "mesh": "default",
                "name": f"{service}-{i}",
                "networking": {
                    "address": f"10.0.{n}.{i + 1}",
                    "inbound": [
                        {"port": 8080, "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}
                    ],
                    "transparentProxying": TP,
                },
            }
        )
        for n, service in enumerate(("web", "backend"))
        for i in range(3)
    ]


def snapshots(policy_docs: list[str], packer: Packer) -> dict[str, Snapshot]:
    proxies = dataplanes()
    policies = mesh_policies("default", [parse_resource(yaml.safe_load(d)) for d in policy_docs])
    index = EndpointIndex(proxies)
    context = ProxyContext(workdir="/w")
    return {
        p.name: build_snapshot(
            generate_snapshot(p, proxies, None, endpoints=index, context=context, policies=policies), packer
        )
        for p in proxies
    }


def wire(snapshot: Snapshot) -> dict[str, list[tuple[str, bytes]]]:
    return {
        t: [(n, p.value) for n, p in snapshot.get(t).resources.items()]
        for t in (LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE)
    }


ZIPKIN = {"type": "Zipkin", "zipkin": {"url": "http://10.9.9.9:9411/api/v2/spans"}}
OTEL = {"type": "OpenTelemetry", "openTelemetry": {"endpoint": "10.9.9.9:4317"}}
REDIRECT = "outbound:passthrough:ipv4"


def test_a_mesh_wide_zipkin_trace_keeps_one_shared_outbound_build() -> None:
    packer = Packer()
    got = snapshots([trace_policy(ZIPKIN)], packer)
    listeners = [s.get(LISTENER_TYPE).entries[REDIRECT] for s in got.values()]
    assert all(entry is listeners[0] for entry in listeners)  # one message, serialized once
    assert b"envoy.tracers.zipkin" in listeners[0].packed.value
    assert all("meshtrace:zipkin" in s.get(CLUSTER_TYPE).entries for s in got.values())


def test_an_otel_trace_shares_the_outbound_build_among_the_proxies_of_one_service() -> None:
    got = snapshots([trace_policy(OTEL)], Packer())
    web = [got[f"web-{i}"].get(LISTENER_TYPE).entries[REDIRECT] for i in range(3)]
    backend = [got[f"backend-{i}"].get(LISTENER_TYPE).entries[REDIRECT] for i in range(3)]
    assert web[1] is web[0] and web[2] is web[0] and backend[1] is backend[0] and backend[2] is backend[0]
    assert tracer_service_names(web[0].packed.value) == {"web"}  # each names its own service
    assert tracer_service_names(backend[0].packed.value) == {"backend"}


def tracer_service_names(listener_bytes: bytes) -> set[str]:
    """The `service_name` of every tracer in a serialized listener's HTTP connection managers."""
    listener = listener_pb2.Listener.FromString(listener_bytes)
    names = set()
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            manager = hcm.HttpConnectionManager()
            if network_filter.typed_config.Unpack(manager) and manager.HasField("tracing"):
                otel = opentelemetry_pb2.OpenTelemetryConfig()
                manager.tracing.provider.typed_config.Unpack(otel)
                names.add(otel.service_name)
    return names


def test_a_trace_for_one_proxy_leaves_every_other_proxy_byte_for_byte_unchanged() -> None:
    packer = Packer()
    before = snapshots([], packer)
    one = trace_policy(ZIPKIN).replace("kind: Mesh", "kind: Dataplane\n    name: web-1")
    after = snapshots([one], packer)
    for name, snapshot in after.items():
        if name != "web-1":
            assert wire(snapshot) == wire(before[name]), name
    assert wire(after["web-1"]) != wire(before["web-1"])
    assert b"envoy.tracers.zipkin" in after["web-1"].get(LISTENER_TYPE).entries[REDIRECT].packed.value


# --- validation ---------------------------------------------------------------------------------

INVALID = """\
type: MeshTrace
mesh: default
name: bad
spec:
  targetRef: {kind: MeshGateway, name: edge}
  default:
    backends:
    - type: Zipkin
      zipkin: {url: "ftp://collector/spans", apiVersion: grpc}
    sampling: {overall: 150, client: "lots"}
    tags:
    - {name: both, literal: x, header: {name: x-a}}
---
type: MeshTrace
mesh: default
name: bad-otel
spec:
  default:
    backends: [{type: OpenTelemetry, openTelemetry: {endpoint: "http://otel:4317"}}]
---
type: MeshTrace
mesh: default
name: bad-datadog
spec:
  default:
    backends: [{type: Datadog, datadog: {url: "http://agent/traces"}}]
---
type: MeshTrace
mesh: default
name: bad-type
spec:
  default:
    backends: [{type: OpenTelemetry, zipkin: {url: "http://z:9411/api/v2/spans"}}]
---
type: MeshTrace
mesh: default
name: no-backends
spec:
  default: {sampling: {overall: 10}}
---
type: MeshTrace
mesh: default
name: two-backends
spec:
  default:
    backends: [{type: Zipkin, zipkin: {url: "http://z:9411"}}, {type: Zipkin, zipkin: {url: "http://y:9411"}}]
"""


@pytest.mark.parametrize(
    ("index", "causes"),
    [
        (
            0,
            (
                ("spec.targetRef.kind", "kind 'MeshGateway' is not supported as the top-level targetRef"),
                ("spec.default.backends[0].zipkin.url", "'ftp://collector/spans' must be a URL like http://"),
                (
                    "spec.default.backends[0].zipkin.apiVersion",
                    "unknown value 'grpc'; expected 'httpJson' or",
                ),
                ("spec.default.sampling.overall", "150 must be a percentage between 0 and 100"),
                ("spec.default.sampling.client", "'lots' is not a number"),
                ("spec.default.tags[0]", "tag must have exactly one of 'literal' or 'header' defined"),
            ),
        ),
        (1, (("spec.default.backends[0].openTelemetry.endpoint", "'http://otel:4317' must be host:port"),)),
        (2, (("spec.default.backends[0].datadog.url", "'http://agent/traces': the port must be given"),)),
        (3, (("spec.default.backends[0].openTelemetry", "must be defined with type OpenTelemetry"),)),
        (4, (("spec.default.backends", "must be defined"),)),
        (5, (("spec.default.backends", "List should have at most 1 item"),)),
    ],
)
def test_kumactl_apply_names_every_invalid_field_and_stores_nothing(
    config_file: Path,  # noqa: F811 - the fixture
    index: int,
    causes: tuple[tuple[str, str], ...],
) -> None:
    document = INVALID.split("---\n")[index]
    assert_refused(config_file, document, causes, "meshtraces")


def test_a_dataplane_trace_with_a_section_name_traces_that_inbound_only() -> None:
    proxy = Dataplane.model_validate(
        {
            "type": "Dataplane",
            "mesh": "default",
            "name": "web-1",
            "networking": {
                "address": "10.0.0.1",
                "inbound": [
                    {
                        "port": 8080,
                        "name": "main",
                        "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"},
                    },
                    {
                        "port": 9090,
                        "name": "admin",
                        "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"},
                    },
                ],
                "outbound": [{"port": 30001, "tags": {"kuma.io/service": "web"}}],
            },
        }
    )
    policy = trace_policy(ZIPKIN).replace(
        "kind: Mesh", "kind: Dataplane\n    name: web-1\n    sectionName: main"
    )
    policies = mesh_policies("default", [parse_resource(yaml.safe_load(policy))])
    listeners = generate_snapshot(proxy, [proxy], None, policies=policies)[LISTENER_TYPE]
    traced = {
        name
        for name, listener in listeners.items()
        if b"envoy.tracers.zipkin" in listener.SerializeToString()
    }
    # The proxy's outbounds take what selects the proxy (Kuma's single-item rules); inbounds by section.
    assert traced == {"inbound:10.0.0.1:8080", "outbound:127.0.0.1:30001"}
