"""Access-log formats: Kuma's defaults and placeholders, and the checks that keep Envoy from
refusing a format (pure functions).

A format is Envoy's: text with command operators (`%START_TIME%`, `%REQ(:PATH)%`, ...), plus Kuma's
placeholders, which the control plane replaces with the proxy's values before Envoy sees them
(on outbounds, who the calling proxy is comes from Envoy's node metadata instead, see below):

| placeholder | value |
|---|---|
| `%KUMA_MESH%` | the proxy's mesh |
| `%KUMA_SOURCE_SERVICE%` | outbound: the proxy's service; inbound: `unknown` (as Kuma) |
| `%KUMA_DESTINATION_SERVICE%` | outbound: the service called; inbound: the inbound's service |
| `%KUMA_SOURCE_ADDRESS%` | the proxy's address (advertised one first) with port 0, as Kuma |
| `%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%` | the proxy's address |
| `%KUMA_TRAFFIC_DIRECTION%` | `INBOUND` or `OUTBOUND` |
| `%KUMA_ZONE%` | the proxy's `kuma.io/zone` label ("" without) |
| `%KUMA_WORKLOAD%` | "" (Kuma's workload identities do not exist here) |

On outbound chains the proxy's own values (its service, address and zone) are not written into
the config: Envoy reads them from its node metadata (`accessLog`, put in the bootstrap by the
control plane, `source_metadata`) with the CEL formatter. The outbound config is then the same for
every proxy of the mesh, so the transparent proxies' mesh-wide shared build stays shared (written
in, a mesh-wide access log would mean one build per proxy: 66 times the generation CPU at 400
proxies). The values are those of the Dataplane when the proxy was bootstrapped.

Envoy refuses a whole listener update for one bad operator (the proxy would keep its old config),
so every operator is checked when the policy is applied: an unknown name, a missing or unexpected
parameter, or a lone `%` (write `%%` for a percent sign) is refused naming the field.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from kuma_common.dp_contract import ACCESS_LOG_METADATA_KEY

# Kuma's default formats (pkg/plugins/policies/meshaccesslog/plugin/xds/configurer.go, v2.14).
DEFAULT_TCP_FORMAT = (
    "[%START_TIME%] %RESPONSE_FLAGS% %KUMA_MESH% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%(%KUMA_SOURCE_SERVICE%)"
    "->%UPSTREAM_HOST%(%KUMA_DESTINATION_SERVICE%) took %DURATION%ms, sent %BYTES_SENT% bytes, "
    "received: %BYTES_RECEIVED% bytes"
)
DEFAULT_HTTP_FORMAT = (
    '[%START_TIME%] %KUMA_MESH% "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-B3-TRACEID?X-DATADOG-TRACEID)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" '
    '"%KUMA_SOURCE_SERVICE%" "%KUMA_DESTINATION_SERVICE%" "%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%" '
    '"%UPSTREAM_HOST%"'
)

KUMA_PLACEHOLDERS = (
    "KUMA_MESH",
    "KUMA_SOURCE_SERVICE",
    "KUMA_DESTINATION_SERVICE",
    "KUMA_SOURCE_ADDRESS",
    "KUMA_SOURCE_ADDRESS_WITHOUT_PORT",
    "KUMA_TRAFFIC_DIRECTION",
    "KUMA_ZONE",
    "KUMA_WORKLOAD",
)
UNKNOWN_SERVICE = "unknown"  # Kuma's source service of inbound traffic

# Envoy 1.40's command operators, each checked against the real binary (tests/test_policy_meshaccesslog.py).
_NO_PARAMETERS = frozenset(
    [
        "ACCESS_LOG_TYPE",
        "BYTES_RECEIVED",
        "BYTES_RETRANSMITTED",
        "BYTES_SENT",
        "CONNECTION_ID",
        "CONNECTION_TERMINATION_DETAILS",
        "CUSTOM_FLAGS",
        "DOWNSTREAM_DETECTED_CLOSE_TYPE",
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS",
        "DOWNSTREAM_DIRECT_LOCAL_PORT",
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
        "DOWNSTREAM_DIRECT_REMOTE_PORT",
        "DOWNSTREAM_HANDSHAKE_DURATION",
        "DOWNSTREAM_HEADER_BYTES_RECEIVED",
        "DOWNSTREAM_HEADER_BYTES_SENT",
        "DOWNSTREAM_LOCAL_ADDRESS",
        "DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID",
        "DOWNSTREAM_LOCAL_CLOSE_REASON",
        "DOWNSTREAM_LOCAL_DNS_SAN",
        "DOWNSTREAM_LOCAL_EMAIL_SAN",
        "DOWNSTREAM_LOCAL_IP_SAN",
        "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
        "DOWNSTREAM_LOCAL_PORT",
        "DOWNSTREAM_LOCAL_SUBJECT",
        "DOWNSTREAM_LOCAL_URI_SAN",
        "DOWNSTREAM_PEER_CERT",
        "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
        "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256",
        "DOWNSTREAM_PEER_CHAIN_SERIALS",
        "DOWNSTREAM_PEER_DNS_SAN",
        "DOWNSTREAM_PEER_EMAIL_SAN",
        "DOWNSTREAM_PEER_FINGERPRINT_1",
        "DOWNSTREAM_PEER_FINGERPRINT_256",
        "DOWNSTREAM_PEER_IP_SAN",
        "DOWNSTREAM_PEER_ISSUER",
        "DOWNSTREAM_PEER_OTHERNAME_SAN",
        "DOWNSTREAM_PEER_SERIAL",
        "DOWNSTREAM_PEER_SUBJECT",
        "DOWNSTREAM_PEER_URI_SAN",
        "DOWNSTREAM_REMOTE_ADDRESS",
        "DOWNSTREAM_REMOTE_PORT",
        "DOWNSTREAM_TLS_CIPHER",
        "DOWNSTREAM_TLS_SESSION_ID",
        "DOWNSTREAM_TLS_VERSION",
        "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
        "DOWNSTREAM_WIRE_BYTES_RECEIVED",
        "DOWNSTREAM_WIRE_BYTES_SENT",
        "DURATION",
        "FILTER_CHAIN_NAME",
        "GRPC_STATUS",
        "GRPC_STATUS_NUMBER",
        "HOSTNAME",
        "LOCAL_REPLY_BODY",
        "PACKETS_RETRANSMITTED",
        "PROTOCOL",
        "REQUESTED_SERVER_NAME",
        "REQUEST_DURATION",
        "REQUEST_HEADERS_BYTES",
        "REQUEST_TX_DURATION",
        "RESPONSE_CODE",
        "RESPONSE_DURATION",
        "RESPONSE_FLAGS",
        "RESPONSE_FLAGS_LONG",
        "RESPONSE_HEADERS_BYTES",
        "RESPONSE_TRAILERS_BYTES",
        "RESPONSE_TX_DURATION",
        "ROUNDTRIP_DURATION",
        "ROUTE_NAME",
        "SPAN_ID",
        "STREAM_ID",
        "TLS_JA3_FINGERPRINT",
        "TLS_JA4_FINGERPRINT",
        "TRACE_ID",
        "UNIQUE_ID",
        "UPSTREAM_CLUSTER",
        "UPSTREAM_CLUSTER_RAW",
        "UPSTREAM_CONNECTION_ID",
        "UPSTREAM_CONNECTION_POOL_READY_DURATION",
        "UPSTREAM_DETECTED_CLOSE_TYPE",
        "UPSTREAM_HEADER_BYTES_RECEIVED",
        "UPSTREAM_HEADER_BYTES_SENT",
        "UPSTREAM_HOST",
        "UPSTREAM_HOST_NAME",
        "UPSTREAM_HOST_NAME_WITHOUT_PORT",
        "UPSTREAM_LOCAL_ADDRESS",
        "UPSTREAM_LOCAL_CLOSE_REASON",
        "UPSTREAM_LOCAL_DNS_SAN",
        "UPSTREAM_LOCAL_IP_SAN",
        "UPSTREAM_LOCAL_PORT",
        "UPSTREAM_LOCAL_URI_SAN",
        "UPSTREAM_PEER_CERT",
        "UPSTREAM_PEER_DNS_SAN",
        "UPSTREAM_PEER_IP_SAN",
        "UPSTREAM_PEER_ISSUER",
        "UPSTREAM_PEER_SUBJECT",
        "UPSTREAM_PEER_URI_SAN",
        "UPSTREAM_PROTOCOL",
        "UPSTREAM_REMOTE_ADDRESS",
        "UPSTREAM_REMOTE_PORT",
        "UPSTREAM_REQUEST_ATTEMPT_COUNT",
        "UPSTREAM_TLS_CIPHER",
        "UPSTREAM_TLS_SESSION_ID",
        "UPSTREAM_TLS_VERSION",
        "UPSTREAM_TRANSPORT_FAILURE_REASON",
        "UPSTREAM_WIRE_BYTES_RECEIVED",
        "UPSTREAM_WIRE_BYTES_SENT",
        "VIRTUAL_CLUSTER_NAME",
    ]
)
# Parameters optional: a time format, an address mask, ...
_OPTIONAL_PARAMETERS = frozenset(
    [
        "START_TIME",
        "START_TIME_LOCAL",
        "EMIT_TIME",
        "EMIT_TIME_LOCAL",
        "RESPONSE_CODE_DETAILS",
        "PATH",
        "DOWNSTREAM_PEER_CERT_V_START",
        "DOWNSTREAM_PEER_CERT_V_END",
        "UPSTREAM_PEER_CERT_V_START",
        "UPSTREAM_PEER_CERT_V_END",
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    ]
)
# Parameters required: a header, a metadata namespace, a filter state key, an expression, ...
_REQUIRED_PARAMETERS = frozenset(
    [
        "REQ",
        "RESP",
        "TRAILER",
        "DYNAMIC_METADATA",
        "CLUSTER_METADATA",
        "UPSTREAM_METADATA",
        "FILTER_STATE",
        "UPSTREAM_FILTER_STATE",
        "ENVIRONMENT",
        "METADATA",
        "CEL",
        "QUERY_PARAM",
        "COMMON_DURATION",
    ]
)
ENVOY_COMMANDS = _NO_PARAMETERS | _OPTIONAL_PARAMETERS | _REQUIRED_PARAMETERS

# Envoy's operator syntax: %NAME%, %NAME(parameters)%, %NAME(parameters):length%.
_OPERATOR = re.compile(r"%([A-Z][A-Z0-9_]*)(\((?:[^)]|\)(?!%|:\d))*\))?(:\d+)?%")


def check_format(text: str) -> str:
    """`text` if Envoy will take it (once Kuma's placeholders are replaced); ValueError saying
    what is wrong where."""
    position = 0
    while (start := text.find("%", position)) != -1:
        if text.startswith("%%", start):
            position = start + 2
            continue
        found = _OPERATOR.match(text, start)
        if found is None:
            raise ValueError(
                f"{text!r}: a '%' at position {start} starts no command operator such as "
                "%START_TIME% or %REQ(:PATH)% (write %% for a percent sign)"
            )
        _check_operator(found.group(1), found.group(2), found.group(3))
        position = found.end()
    return text


def _check_operator(name: str, parameters: str | None, length: str | None) -> None:
    if name in KUMA_PLACEHOLDERS:
        if parameters or length:
            raise ValueError(f"%{name}% is Kuma's placeholder and takes no parameters")
        return
    if name not in ENVOY_COMMANDS:
        raise ValueError(
            f"%{name}% is not a command operator of Envoy nor a Kuma placeholder "
            f"({', '.join(f'%{p}%' for p in KUMA_PLACEHOLDERS)})"
        )
    if name in _REQUIRED_PARAMETERS and not parameters:
        raise ValueError(f"%{name}% needs parameters, e.g. %{name}(...)%")
    if name in _NO_PARAMETERS and (parameters or length):
        raise ValueError(f"%{name}% takes no parameters nor length")


# Where Envoy finds who it is (node metadata, see `source_metadata`), for the CEL formatter.
SOURCE_METADATA = f"xds.node.metadata.{ACCESS_LOG_METADATA_KEY}"
CEL_FORMATTER = "envoy.formatter.cel"


def source_metadata(address: str, service: str, zone: str) -> dict[str, str]:
    """The bootstrap's node metadata entry outbound access logs read (`KumaValues.from_node`)."""
    return {
        "sourceAddress": address,
        "sourceAddressWithPort": _with_port(address),
        "sourceService": service,
        "zone": zone,
    }


def _from_node(field: str) -> str:
    return f"%CEL({SOURCE_METADATA}.{field})%"


@dataclass(frozen=True)
class KumaValues:
    """What Kuma's placeholders stand for on one chain of one proxy."""

    mesh: str
    source_service: str
    source_ip: str
    destination_service: str
    direction: str  # INBOUND | OUTBOUND
    zone: str = ""
    source_ip_with_port: str | None = None  # None: `source_ip` with port 0

    @classmethod
    def from_node(cls, mesh: str, destination_service: str, direction: str) -> KumaValues:
        """Values whose proxy-specific part Envoy reads from its node metadata (the same for all)."""
        return cls(
            mesh=mesh,
            source_service=_from_node("sourceService"),
            source_ip=_from_node("sourceAddress"),
            destination_service=destination_service,
            direction=direction,
            zone=_from_node("zone"),
            source_ip_with_port=_from_node("sourceAddressWithPort"),
        )

    def interpolate(self, text: str) -> str:
        address = self.source_ip
        with_port = self.source_ip_with_port or _with_port(address)
        for placeholder, value in (
            ("%KUMA_SOURCE_ADDRESS%", with_port),
            ("%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%", address),
            ("%KUMA_SOURCE_SERVICE%", self.source_service),
            ("%KUMA_DESTINATION_SERVICE%", self.destination_service),
            ("%KUMA_MESH%", self.mesh),
            ("%KUMA_TRAFFIC_DIRECTION%", self.direction),
            ("%KUMA_ZONE%", self.zone),
            ("%KUMA_WORKLOAD%", ""),
        ):
            text = text.replace(placeholder, value)
        return text


def _with_port(address: str) -> str:
    return f"[{address}]:0" if _is_ipv6(address) else f"{address}:0"


def _is_ipv6(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 6
    except ValueError:
        return False


def default_format(protocol_is_http: bool) -> str:
    return DEFAULT_HTTP_FORMAT if protocol_is_http else DEFAULT_TCP_FORMAT
