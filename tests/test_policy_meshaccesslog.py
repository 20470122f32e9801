"""MeshAccessLog: formats and placeholders (pure), every Envoy operator we accept accepted by the
real Envoy, the mesh-wide shared build left alone, validation through `kumactl apply` (the field
named, nothing stored), and real Envoys writing real files for real traffic: HTTP and TCP,
inbound and outbound, exactly one line per request (HTTP) or connection (TCP)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from control_plane.policies.loading import mesh_policies
from control_plane.policies.meshaccesslog.formats import (
    _OPTIONAL_PARAMETERS,
    _REQUIRED_PARAMETERS,
    ENVOY_COMMANDS,
    KumaValues,
    check_format,
)
from control_plane.resources.dataplane import Dataplane
from control_plane.resources.registry import parse_resource
from control_plane.xds.generate.endpoints import EndpointIndex
from control_plane.xds.generate.snapshot import ProxyContext, generate_snapshot
from control_plane.xds.names import LISTENER_TYPE
from labkit.waiting import eventually
from tests.support.kumactl_api import assert_refused, config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.policy_mesh import constant, policy_mesh

pytestmark = pytest.mark.timeout(120)

MESH = {"kind": "Mesh"}
DB = {"kind": "MeshService", "name": "db"}


def access_log(name: str, top: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "type": "MeshAccessLog",
        "mesh": "default",
        "name": name,
        "spec": {"targetRef": top or MESH, **spec},
    }


def file_backend(path: Path | str, fmt: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "File", "file": {"path": str(path), **({"format": fmt} if fmt else {})}}


def backends(path: Path) -> dict[str, Any]:
    return {"backends": [file_backend(path)]}


# --- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "%START_TIME% %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH):64% %RESPONSE_CODE%",
        "%START_TIME(%s.%3f)% 100%% done",
        "%KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE% %KUMA_MESH% %KUMA_TRAFFIC_DIRECTION%",
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT(16)% %CEL(request.path)% %METADATA(ROUTE:ns:k)%",
        "plain text, no operator",
    ],
)
def test_formats_envoy_takes_are_accepted(text: str) -> None:
    assert check_format(text) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("%BOGUS% x", "%BOGUS% is not a command operator of Envoy nor a Kuma placeholder"),
        ("%KUMA_NOPE%", "%KUMA_NOPE% is not a command operator"),
        ("%REQ%", "%REQ% needs parameters"),
        ("%PROTOCOL(x)%", "%PROTOCOL% takes no parameters"),
        ("%RESPONSE_CODE:5%", "%RESPONSE_CODE% takes no parameters nor length"),
        ("%KUMA_MESH(x)%", "%KUMA_MESH% is Kuma's placeholder and takes no parameters"),
        ("100% done", "a '%' at position 3 starts no command operator"),
        ("%start_time%", "a '%' at position 0 starts no command operator"),
    ],
)
def test_formats_envoy_refuses_are_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=None) as refused:
        check_format(text)
    assert why in str(refused.value)


def test_placeholders_are_replaced_with_the_proxys_values() -> None:
    values = KumaValues("default", "web", "10.0.0.1", "backend", "OUTBOUND", "zone-1")
    text = "%KUMA_MESH% %KUMA_SOURCE_SERVICE% %KUMA_SOURCE_ADDRESS% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT% "
    text += (
        "%KUMA_DESTINATION_SERVICE% %KUMA_TRAFFIC_DIRECTION% %KUMA_ZONE% [%KUMA_WORKLOAD%] %UPSTREAM_HOST%"
    )
    got = values.interpolate(text)
    assert got == "default web 10.0.0.1:0 10.0.0.1 backend OUTBOUND zone-1 [] %UPSTREAM_HOST%"
    v6 = KumaValues("default", "web", "fd00::1", "backend", "OUTBOUND")
    assert v6.interpolate("%KUMA_SOURCE_ADDRESS%") == "[fd00::1]:0"


TYPES = "type.googleapis.com/envoy.extensions"


def test_every_operator_we_accept_is_accepted_by_envoy(envoy_binary: Path, tmp_path: Path) -> None:
    """The operator list is Envoy 1.40's: a format using all of them passes `envoy --mode validate`."""
    samples = {
        "REQ": "(:PATH)",
        "RESP": "(content-type)",
        "TRAILER": "(grpc-status)",
        "DYNAMIC_METADATA": "(ns:key)",
        "CLUSTER_METADATA": "(ns:key)",
        "UPSTREAM_METADATA": "(ns:key)",
        "FILTER_STATE": "(key)",
        "UPSTREAM_FILTER_STATE": "(key)",
        "ENVIRONMENT": "(HOME)",
        "METADATA": "(ROUTE:ns:key)",
        "CEL": "(request.path)",
        "QUERY_PARAM": "(q)",
        "COMMON_DURATION": "(DS_RX_BEG:DS_RX_END:ms)",
    }
    assert set(samples) == _REQUIRED_PARAMETERS
    operators = [f"%{name}{samples.get(name, '')}%" for name in sorted(ENVOY_COMMANDS)]
    operators += [f"%{name}(%s)%" for name in sorted(_OPTIONAL_PARAMETERS - {"PATH"})]
    text = check_format(" ".join(operators))
    config = {
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                    "filter_chains": [{"filters": [{"name": "tcp", "typed_config": {
                        "@type": f"{TYPES}.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "s",
                        "cluster": "c",
                        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                            "@type": f"{TYPES}.access_loggers.file.v3.FileAccessLog",
                            "path": "/dev/null",
                            "log_format": {"text_format_source": {"inline_string": text}},
                        }}],
                    }}]}],
                }
            ],
            "clusters": [{"name": "c", "connect_timeout": "1s"}],
        }
    }  # fmt: skip
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [str(envoy_binary), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the shared build --------------------------------------------------------------------------

TP = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}


def dataplane(name: str, address: str, service: str, protocol: str = "http") -> Dataplane:
    inbound = [{"port": 8080, "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol}}]
    return Dataplane.model_validate(
        {
            "type": "Dataplane",
            "mesh": "default",
            "name": name,
            "networking": {"address": address, "inbound": inbound, "transparentProxying": TP},
        }
    )


def chain_formats(listener: listener_pb2.Listener) -> dict[str, list[str]]:
    """chain name → the text (or JSON) formats of its access logs."""
    found: dict[str, list[str]] = {}
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            config: Any = hcm.HttpConnectionManager() if "http_connection" in network_filter.name else None
            config = config or tcp_proxy_pb2.TcpProxy()
            network_filter.typed_config.Unpack(config)
            for log in config.access_log:
                file_log = file_pb2.FileAccessLog()
                log.typed_config.Unpack(file_log)
                text = file_log.log_format.text_format_source.inline_string
                found.setdefault(chain.name, []).append(text or str(file_log.log_format.json_format))
    return found


def test_only_the_proxies_a_policy_selects_leave_the_shared_build_which_stays_untouched() -> None:
    dps = [
        dataplane("web-1", "10.0.0.1", "web"),
        dataplane("web-2", "10.0.0.2", "web"),
        dataplane("db-1", "10.0.0.3", "db", "tcp"),
    ]
    only_web_1 = parse_resource(
        access_log("web-1-out", {"kind": "Dataplane", "name": "web-1"}, to=[
            {"targetRef": MESH, "default": {"backends": [file_backend("/tmp/out.log")]}}
        ])
    )  # fmt: skip
    index, policies = EndpointIndex(dps), mesh_policies("default", [only_web_1])
    context = ProxyContext(workdir="/w")

    def outbound_listener(name: str) -> listener_pb2.Listener:
        proxy = next(d for d in dps if d.name == name)
        resources = generate_snapshot(proxy, dps, None, endpoints=index, context=context, policies=policies)
        return resources[LISTENER_TYPE]["outbound:passthrough:ipv4"]

    shared = outbound_listener("web-2")
    before = shared.SerializeToString(deterministic=True)
    assert outbound_listener("db-1") is shared  # the others share one build
    assert chain_formats(shared) == {}
    mine = outbound_listener("web-1")
    assert mine is not shared
    assert shared.SerializeToString(deterministic=True) == before  # nothing shared was changed
    formats = chain_formats(mine)
    assert set(formats) == {"outbound:db", "outbound:web"}
    # Who calls is read by Envoy from its node metadata (the same config for every caller).
    assert f"{NODE_ADDRESS}({NODE_SERVICE})->%UPSTREAM_HOST%(db) took" in formats["outbound:db"][0]
    assert f'"{NODE_SERVICE}" "web" "{NODE_ADDRESS}"' in formats["outbound:web"][0]


NODE_ADDRESS = "%CEL(xds.node.metadata.accessLog.sourceAddress)%"
NODE_SERVICE = "%CEL(xds.node.metadata.accessLog.sourceService)%"


def test_a_mesh_wide_file_log_keeps_one_shared_build_a_tcp_one_gives_each_proxy_its_own() -> None:
    dps = [
        dataplane("web-1", "10.0.0.1", "web"),
        dataplane("web-2", "10.0.0.2", "web"),
        dataplane("db-1", "10.0.0.3", "db", "tcp"),
    ]
    context = ProxyContext(workdir="/w")

    def outbound_listeners(backend: dict[str, Any]) -> dict[str, listener_pb2.Listener]:
        policy = parse_resource(
            access_log("all", MESH, to=[{"targetRef": MESH, "default": {"backends": [backend]}}])
        )
        index, policies = EndpointIndex(dps), mesh_policies("default", [policy])
        return {
            d.name: generate_snapshot(d, dps, None, endpoints=index, context=context, policies=policies)[
                LISTENER_TYPE
            ]["outbound:passthrough:ipv4"]
            for d in dps
        }

    file_logged = outbound_listeners(file_backend("/tmp/out.log"))
    assert file_logged["web-1"] is file_logged["web-2"] is file_logged["db-1"]
    assert NODE_SERVICE in chain_formats(file_logged["web-1"])["outbound:db"][0]
    tcp_logged = outbound_listeners({"type": "Tcp", "tcp": {"address": "127.0.0.1:5000"}})
    assert len({id(listener) for listener in tcp_logged.values()}) == 3  # each names its agent's FIFO


# --- validation --------------------------------------------------------------------------------

INVALID = """
type: MeshAccessLog
mesh: default
name: bad-backends
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: Mesh}
    default:
      backends:
      - {type: File, file: {path: relative/access.log}}
      - {type: File, tcp: {address: 127.0.0.1:5000}}
      - {type: Tcp, tcp: {address: nowhere}}
      - {type: Tcp, tcp: {address: '127.0.0.1:70000'}}
      - {type: File, file: {path: /tmp/a.log, format: {type: Plain, plain: '%START_TIME% %BOGUS%'}}}
      - {type: File, file: {path: /tmp/a.log, format: {type: Plain}}}
      - {type: File, file: {path: /tmp/a.log, format: {type: Json, json: []}}}
      - {type: File, file: {path: /tmp/a.log, format: {type: Json, json: [{key: a, value: '%REQ%'}]}}}
      - {type: File, file: {path: /a, format: {type: Json, json: [{key: a, value: x}, {key: a, value: y}]}}}
      - {type: File, file: {path: /tmp/a.log, format: {type: Xml}}}
      - {type: OpenTelemetry, openTelemetry: {endpoint: 'otel-collector:4317'}}
      - {type: OpenTelemetry, openTelemetry: {attributes: [{key: Mesh, value: x}]}}
"""


def test_invalid_fields_are_refused_naming_them(config_file: Path) -> None:  # noqa: F811
    backends = "spec.to[0].default.backends"
    causes = (
        (f"{backends}[0].file.path", "'relative/access.log' is not an absolute file path"),
        (f"{backends}[1].file", "must be defined with type File"),
        (f"{backends}[2].tcp.address", "'nowhere' is not host:port"),
        (f"{backends}[3].tcp.address", "'127.0.0.1:70000' is not host:port"),
        (f"{backends}[4].file.format.plain", "%BOGUS% is not a command operator of Envoy"),
        (f"{backends}[5].file.format.plain", "must be defined with type Plain"),
        (f"{backends}[6].file.format.json", "must not be empty"),
        (f"{backends}[7].file.format.json[0].value", "%REQ% needs parameters"),
        (f"{backends}[8].file.format.json[1].key", "'a' is listed more than once"),
        (f"{backends}[9].file.format.type", "unknown value 'Xml'; expected 'Plain' or 'Json'"),
        (f"{backends}[10].type", "OpenTelemetry access logs are not supported yet"),
        (f"{backends}[11].openTelemetry.attributes[0].key", "String should match pattern"),
    )
    assert_refused(config_file, INVALID, causes, "meshaccesslogs")
    rules = access_log("bad-rules", rules=[{"matches": [], "default": {}}])
    causes = (
        ("spec.rules[0].matches", "unknown field"),
        ("spec.rules[0].default.backends", "field is required"),
    )
    assert_refused(config_file, yaml.safe_dump(rules), causes, "meshaccesslogs")
    valid = access_log("ok", rules=[{"default": {"backends": [file_backend("/tmp/ok.log")]}}])
    assert kumactl(config_file, "apply", "-f", "-", stdin=yaml.safe_dump(valid)).exit_code == 0


# --- real Envoy, real traffic --------------------------------------------------------------------


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def requests_logged(path: Path, count: int) -> list[str]:
    """The file's lines once it holds `count` (Envoy flushes its log files about every second)."""
    return await eventually(
        lambda: len(lines(path)) >= count and lines(path), timeout=15, what=f"{count} lines"
    )


async def test_http_requests_are_logged_once_each_inbound_and_outbound(
    envoy_binary: Path, tmp_path: Path
) -> None:
    outbound, inbound = tmp_path / "outbound.log", tmp_path / "inbound.log"
    json_format = {
        "type": "Json",
        "json": [
            {"key": "method", "value": "%REQ(:METHOD)%"},
            {"key": "path", "value": "%REQ(:PATH)%"},
            {"key": "status", "value": "%RESPONSE_CODE%"},
            {"key": "source", "value": "%KUMA_SOURCE_SERVICE%"},
            {"key": "destination", "value": "%KUMA_DESTINATION_SERVICE%"},
            {"key": "direction", "value": "%KUMA_TRAFFIC_DIRECTION%"},
        ],
    }
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await mesh.backend("backend-1", "backend", constant(b"hello"))
        web = await mesh.client("web-1", ["backend"], "web")
        await mesh.apply(
            access_log("out", to=[{"targetRef": MESH, "default": {"backends": [file_backend(outbound)]}}]),
            access_log(
                "in",
                {"kind": "MeshService", "name": "backend"},
                rules=[{"default": {"backends": [file_backend(inbound, json_format)]}}],
            ),
        )
        n = 7
        for i in range(n):
            assert (await web.get("backend", f"/item/{i}")).status_code == 200
        # A last marker request: once its line is in, every earlier one is (Envoy writes in order).
        assert (await web.get("backend", "/marker")).status_code == 200
        out_lines = await requests_logged(outbound, n + 1)
        in_lines = await requests_logged(inbound, n + 1)
    assert len(out_lines) == len(in_lines) == n + 1, (out_lines, in_lines)
    for i, line in enumerate(out_lines[:n]):
        # Kuma's default HTTP format, placeholders filled in for web-1 calling backend.
        assert f'] default "GET /item/{i} HTTP/1.1" 200 ' in line, line
        assert '"web" "backend" "127.0.0.1" "127.0.0.1:' in line, line
    entries = [json.loads(line) for line in in_lines[:n]]
    assert entries == [
        {
            "method": "GET",
            "path": f"/item/{i}",
            "status": 200,  # one operator: typed
            "source": "unknown",
            "destination": "backend",
            "direction": "INBOUND",
        }
        for i in range(n)
    ]


async def test_tcp_connections_are_logged_once_each_inbound_and_outbound(
    envoy_binary: Path, tmp_path: Path
) -> None:
    outbound, inbound = tmp_path / "outbound.log", tmp_path / "inbound.log"
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        db, _ = await mesh.backend("db-1", "db", constant(b"rows"), protocol="tcp")
        web = await mesh.client("web-1", ["db"], "web")
        await mesh.apply(
            access_log("out", to=[{"targetRef": DB, "default": backends(outbound)}]),
            access_log("in", DB, **{"from": [{"targetRef": MESH, "default": backends(inbound)}]}),
        )
        n = 4
        for _ in range(n):  # each on its own connection, closed after the response
            response = await web.get("db", "/")
            assert response.status_code == 200 and response.content == b"rows"
        out_lines = await requests_logged(outbound, n)
        in_lines = await requests_logged(inbound, n)
    assert len(out_lines) == len(in_lines) == n
    for line in out_lines:  # Kuma's default TCP format
        assert f" default 127.0.0.1(web)->127.0.0.1:{db.inbound_ports[0]}(db) took " in line, line
        assert " bytes, received: " in line and "sent 0 bytes" not in line, line
    for line in in_lines:
        assert " default 127.0.0.1(unknown)->127.0.0.1:" in line and "(db) took " in line, line
