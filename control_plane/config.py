"""`kuma-cp run` configuration: defaults < YAML file (Kuma's key layout) < environment (Kuma's names).

Every setting is declared once in `_SETTINGS` with its YAML path, its environment variable, its
parser and its default; `load_config` folds the three sources and builds the frozen `CpConfig`.
Keys and `KUMA_*` variables of Kuma's own configuration that we do not implement are accepted and
listed in `CpConfig.ignored_keys` (so a Kuma config file still loads and the CLI warns); a key or a
`KUMA_*` variable that no Kuma program has (control_plane/kuma_settings.py, generated from Kuma's
source) is a typo and refused, naming it: a misspelt security setting must not be silently
ignored. An empty environment variable counts as unset, and so does a YAML key without a value (as
in Kuma's commented defaults file).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from control_plane.kuma_settings import KUMA_CP_ENV, KUMA_CP_KEYS, KUMA_CP_OPEN_KEYS, KUMA_OTHER_ENV
from control_plane.yaml_errors import yaml_error_message
from kuma_common import defaults, safe_yaml
from kuma_common.durations import parse_duration

StoreType = Literal["sqlite", "memory", "postgres"]
DpProxyAuthnType = Literal["dpToken", "none"]
ApiAuthnType = Literal["tokens"]

STORE_TYPES: tuple[str, ...] = ("sqlite", "memory", "postgres")
DP_PROXY_AUTHN_TYPES: tuple[str, ...] = ("dpToken", "none")
POSTGRES_TLS_MODES: tuple[str, ...] = ("disable", "verifyNone", "verifyCa", "verifyFull")
API_AUTHN_TYPES: tuple[str, ...] = ("tokens",)  # Kuma's legacy "clientCerts" is not implemented

DEFAULT_WORK_DIR = "~/.kuma"
DEFAULT_DP_SERVER_PORT = defaults.DP_SERVER_PORT
DEFAULT_API_HTTP_PORT = defaults.API_HTTP_PORT
DEFAULT_API_HTTPS_PORT = defaults.API_HTTPS_PORT
DEFAULT_DIAGNOSTICS_PORT = defaults.DIAGNOSTICS_PORT
DEFAULT_API_HTTP_INTERFACE = "0.0.0.0"
DEFAULT_DEREGISTRATION_DELAY = "10s"
DEFAULT_DNS_DOMAIN = "mesh"
DEFAULT_DNS_CIDR = "240.0.0.0/4"
DEFAULT_SERVICE_VIP_PORT = 80
DEFAULT_MONITORING_ASSIGNMENT_PORT = 5676  # Kuma's MADS port: Prometheus discovery
# Ours (Kuma frees a VIP at once): how long a service without instances keeps its VIP and name, so a
# redeploy or a VM reboot does not change the address clients cached or flap the name to NXDOMAIN.
DEFAULT_VIP_RELEASE_GRACE_PERIOD = "10m"
DEFAULT_VIP_REFRESH_INTERVAL = "500ms"  # Kuma's KUMA_RUNTIME_UNIVERSAL_VIP_REFRESH_INTERVAL
# Ours: how often a PostgreSQL store compares the whole table with what it last saw, so a change
# notification lost with the listening connection still reaches this instance.
DEFAULT_POSTGRES_RESYNC_INTERVAL = "5s"


class ConfigError(ValueError):
    """A configuration value a user gave that cannot be used; the message names the key or variable."""


# --- value parsers: raw value (str from env, any YAML scalar from the file) -> typed value ------


def _port(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a port number (0-65535)")
    try:
        port = int(str(raw).strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not a port number (0-65535)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{raw!r} is not a port number (0-65535)")
    return port


def _string(raw: Any) -> str:
    if isinstance(raw, dict | list):
        raise ValueError(f"{raw!r} is not a string")
    return str(raw)


def _optional_string(raw: Any) -> str | None:
    return None if raw is None or raw == "" else _string(raw)


_TRUE = frozenset({"1", "t", "true"})
_FALSE = frozenset({"0", "f", "false"})


def _bool(raw: Any) -> bool:
    # Go's strconv.ParseBool spellings, as Kuma's env parsing accepts them.
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a boolean (true or false)")


def _duration(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"{raw!r} is not a duration (expected e.g. 10s, 500ms, 1m30s)")
    return parse_duration(str(raw))


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        if raw not in options:
            raise ValueError(f"{raw!r} is not one of: {', '.join(options)}")
        return str(raw)

    return parse


def _nonzero_port(raw: Any) -> int:
    port = _port(raw)
    if port == 0:
        raise ValueError("port can't be 0")
    return port


def _positive_duration(raw: Any) -> float:
    seconds = _duration(raw)
    if seconds <= 0:
        raise ValueError(f"{raw!r} must be a positive duration (e.g. 500ms)")
    return seconds


def _positive_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a positive integer")
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not a positive integer") from None
    if value <= 0:
        raise ValueError(f"{raw!r} is not a positive integer")
    return value


def _non_negative_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a non-negative integer")
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not a non-negative integer") from None
    if value < 0:
        raise ValueError(f"{raw!r} is not a non-negative integer")
    return value


def _dns_domain(raw: Any) -> str:
    text = _string(raw).strip().lower()
    if text.startswith("."):
        raise ValueError(f"{raw!r}: domain must not start with a dot")
    if not text or not all(_DNS_LABEL.fullmatch(label) for label in text.rstrip(".").split(".")):
        raise ValueError(f"{raw!r} is not a DNS domain (e.g. mesh)")
    return text.rstrip(".")


_DNS_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def _vip_cidr(raw: Any) -> ipaddress.IPv4Network:
    text = _string(raw).strip()
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{raw!r} is not a CIDR (e.g. 240.0.0.0/4)") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"{raw!r} is not an IPv4 CIDR: virtual IPs are IPv4 (e.g. 240.0.0.0/4)")
    if network.prefixlen > 30:
        raise ValueError(f"{raw!r} holds no room for virtual IPs: use a /30 or larger")
    return network


def _work_dir(raw: Any) -> Path:
    text = _string(raw)
    if not text:
        raise ValueError("must not be empty")
    return Path(text).expanduser()


@dataclass(frozen=True)
class _Setting:
    path: tuple[str, ...]
    env: str
    parse: Callable[[Any], Any]
    default: Any

    @property
    def key(self) -> str:
        return ".".join(self.path)


# Limits of the DP server (5678) and its ADS streams against slow, large or many clients
# (docs/security.md). readHeaderTimeout is Kuma's; the others are ours, named after Kuma's
# apiServer.readTimeout/idleTimeout and gRPC's options.
_DP_SERVER_LIMITS: tuple[_Setting, ...] = (
    _Setting(
        ("dpServer", "readHeaderTimeout"), "KUMA_DP_SERVER_READ_HEADER_TIMEOUT", _positive_duration, "5s"
    ),
    _Setting(("dpServer", "readTimeout"), "KUMA_DP_SERVER_READ_TIMEOUT", _positive_duration, "10s"),
    _Setting(("dpServer", "idleTimeout"), "KUMA_DP_SERVER_IDLE_TIMEOUT", _positive_duration, "2m"),
    _Setting(
        ("dpServer", "maxRequestBodyBytes"), "KUMA_DP_SERVER_MAX_REQUEST_BODY_BYTES", _positive_int, 1 << 20
    ),
    _Setting(("dpServer", "maxConnections"), "KUMA_DP_SERVER_MAX_CONNECTIONS", _positive_int, 10_000),
    _Setting(
        ("dpServer", "maxConnectionsPerSource"),
        "KUMA_DP_SERVER_MAX_CONNECTIONS_PER_SOURCE",
        _positive_int,
        1_000,
    ),
    _Setting(
        ("xdsServer", "maxReceiveMessageBytes"),
        "KUMA_XDS_SERVER_MAX_RECEIVE_MESSAGE_BYTES",
        _positive_int,
        4 << 20,
    ),
    _Setting(("xdsServer", "maxStreams"), "KUMA_XDS_SERVER_MAX_STREAMS", _positive_int, 10_000),
    _Setting(
        ("xdsServer", "maxStreamsPerConnection"),
        "KUMA_XDS_SERVER_MAX_STREAMS_PER_CONNECTION",
        _positive_int,
        100,
    ),
    _Setting(("xdsServer", "requestQueueSize"), "KUMA_XDS_SERVER_REQUEST_QUEUE_SIZE", _positive_int, 64),
    _Setting(("xdsServer", "sendTimeout"), "KUMA_XDS_SERVER_SEND_TIMEOUT", _positive_duration, "1m"),
)


def _pg(name: str, env: str, parse: Callable[[Any], Any], default: Any) -> _Setting:
    return _Setting(("store", "postgres", *name.split(".")), "KUMA_STORE_POSTGRES_" + env, parse, default)


# Kuma's store.postgres section (docs/postgres.md); `resyncInterval` is ours.
_POSTGRES_SETTINGS: tuple[_Setting, ...] = (
    _pg("host", "HOST", _string, "127.0.0.1"),
    _pg("port", "PORT", _nonzero_port, 15432),  # Kuma's default; PostgreSQL's own is 5432
    _pg("user", "USER", _string, "kuma"),
    _pg("password", "PASSWORD", _string, "kuma"),
    _pg("dbName", "DB_NAME", _string, "kuma"),
    _pg("tls.mode", "TLS_MODE", _choice(POSTGRES_TLS_MODES), "disable"),
    _pg("tls.certPath", "TLS_CERT_PATH", _optional_string, None),
    _pg("tls.keyPath", "TLS_KEY_PATH", _optional_string, None),
    _pg("tls.caPath", "TLS_CA_PATH", _optional_string, None),
    _pg("maxOpenConnections", "MAX_OPEN_CONNECTIONS", _non_negative_int, 50),  # 0: unlimited
    _pg("minOpenConnections", "MIN_OPEN_CONNECTIONS", _non_negative_int, 0),
    _pg("connectionTimeout", "CONNECTION_TIMEOUT", _positive_int, 5),  # seconds, as Kuma's
    _pg("maxConnectionLifetime", "MAX_CONNECTION_LIFETIME", _positive_duration, "1h"),
    _pg("maxConnectionIdleTime", "MAX_CONNECTION_IDLE_TIME", _positive_duration, "30m"),
    _pg("healthCheckInterval", "HEALTH_CHECK_INTERVAL", _positive_duration, "30s"),
    _pg("resyncInterval", "RESYNC_INTERVAL", _positive_duration, DEFAULT_POSTGRES_RESYNC_INTERVAL),
)

_SETTINGS: tuple[_Setting, ...] = (
    _Setting(("general", "workDir"), "KUMA_GENERAL_WORK_DIR", _work_dir, DEFAULT_WORK_DIR),
    _Setting(("general", "tlsCertFile"), "KUMA_GENERAL_TLS_CERT_FILE", _optional_string, None),
    _Setting(("general", "tlsKeyFile"), "KUMA_GENERAL_TLS_KEY_FILE", _optional_string, None),
    _Setting(("store", "type"), "KUMA_STORE_TYPE", _choice(STORE_TYPES), "sqlite"),
    *_POSTGRES_SETTINGS,
    _Setting(("dpServer", "port"), "KUMA_DP_SERVER_PORT", _port, DEFAULT_DP_SERVER_PORT),
    _Setting(("bootstrapServer", "params", "xdsHost"), "KUMA_BOOTSTRAP_SERVER_PARAMS_XDS_HOST", _string, ""),
    _Setting(("bootstrapServer", "params", "xdsPort"), "KUMA_BOOTSTRAP_SERVER_PARAMS_XDS_PORT", _port, 0),
    _Setting(
        ("dpServer", "authn", "dpProxy", "type"),
        "KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE",
        _choice(DP_PROXY_AUTHN_TYPES),
        "dpToken",
    ),
    *_DP_SERVER_LIMITS,
    _Setting(("apiServer", "http", "port"), "KUMA_API_SERVER_HTTP_PORT", _port, DEFAULT_API_HTTP_PORT),
    _Setting(
        ("apiServer", "http", "interface"),
        "KUMA_API_SERVER_HTTP_INTERFACE",
        _string,
        DEFAULT_API_HTTP_INTERFACE,
    ),
    _Setting(("apiServer", "https", "port"), "KUMA_API_SERVER_HTTPS_PORT", _port, DEFAULT_API_HTTPS_PORT),
    _Setting(("apiServer", "https", "enabled"), "KUMA_API_SERVER_HTTPS_ENABLED", _bool, True),
    _Setting(
        ("apiServer", "https", "interface"),
        "KUMA_API_SERVER_HTTPS_INTERFACE",
        _string,
        DEFAULT_API_HTTP_INTERFACE,
    ),
    _Setting(
        ("apiServer", "https", "tlsCertFile"), "KUMA_API_SERVER_HTTPS_TLS_CERT_FILE", _optional_string, None
    ),
    _Setting(
        ("apiServer", "https", "tlsKeyFile"), "KUMA_API_SERVER_HTTPS_TLS_KEY_FILE", _optional_string, None
    ),
    _Setting(
        ("apiServer", "authn", "localhostIsAdmin"), "KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN", _bool, True
    ),
    _Setting(
        ("apiServer", "authn", "type"), "KUMA_API_SERVER_AUTHN_TYPE", _choice(API_AUTHN_TYPES), "tokens"
    ),
    _Setting(
        ("apiServer", "authn", "tokens", "bootstrapAdminToken"),
        "KUMA_API_SERVER_AUTHN_TOKENS_BOOTSTRAP_ADMIN_TOKEN",
        _bool,
        True,
    ),
    _Setting(
        ("apiServer", "authn", "tokens", "enableIssuer"),
        "KUMA_API_SERVER_AUTHN_TOKENS_ENABLE_ISSUER",
        _bool,
        True,
    ),
    _Setting(
        ("diagnostics", "serverPort"),
        "KUMA_DIAGNOSTICS_SERVER_PORT",
        _port,
        DEFAULT_DIAGNOSTICS_PORT,
    ),
    _Setting(
        ("xds", "dataplaneDeregistrationDelay"),
        "KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY",
        _duration,
        DEFAULT_DEREGISTRATION_DELAY,
    ),
    # Ours: how often each open ADS stream's token is checked again (revocation, expiry, a
    # removed signing key end the stream within this time).
    _Setting(("xds", "tokenReverifyInterval"), "KUMA_XDS_TOKEN_REVERIFY_INTERVAL", _positive_duration, "10s"),
    _Setting(("defaults", "skipMeshCreation"), "KUMA_DEFAULTS_SKIP_MESH_CREATION", _bool, False),
    _Setting(
        ("monitoringAssignmentServer", "enabled"), "KUMA_MONITORING_ASSIGNMENT_SERVER_ENABLED", _bool, True
    ),
    _Setting(
        ("monitoringAssignmentServer", "port"),
        "KUMA_MONITORING_ASSIGNMENT_SERVER_PORT",
        _nonzero_port,
        DEFAULT_MONITORING_ASSIGNMENT_PORT,
    ),
    _Setting(("dnsServer", "domain"), "KUMA_DNS_SERVER_DOMAIN", _dns_domain, DEFAULT_DNS_DOMAIN),
    _Setting(("dnsServer", "CIDR"), "KUMA_DNS_SERVER_CIDR", _vip_cidr, DEFAULT_DNS_CIDR),
    _Setting(("dnsServer", "serviceVipEnabled"), "KUMA_DNS_SERVER_SERVICE_VIP_ENABLED", _bool, True),
    _Setting(
        ("dnsServer", "serviceVipPort"),
        "KUMA_DNS_SERVER_SERVICE_VIP_PORT",
        _nonzero_port,
        DEFAULT_SERVICE_VIP_PORT,
    ),
    _Setting(
        ("dnsServer", "vipReleaseGracePeriod"),
        "KUMA_DNS_SERVER_VIP_RELEASE_GRACE_PERIOD",
        _duration,
        DEFAULT_VIP_RELEASE_GRACE_PERIOD,
    ),
    _Setting(
        ("runtime", "universal", "vipRefreshInterval"),
        "KUMA_RUNTIME_UNIVERSAL_VIP_REFRESH_INTERVAL",
        _positive_duration,
        DEFAULT_VIP_REFRESH_INTERVAL,
    ),
)
_BY_PATH: dict[tuple[str, ...], _Setting] = {s.path: s for s in _SETTINGS}
_BY_ENV: dict[str, _Setting] = {s.env: s for s in _SETTINGS}
_SECTIONS: frozenset[str] = frozenset(s.path[0] for s in _SETTINGS)
ENV_PREFIX = "KUMA_"
# Every prefix of a setting path is a mapping in the YAML file.
_BRANCHES: frozenset[tuple[str, ...]] = frozenset(
    s.path[:i] for s in _SETTINGS for i in range(1, len(s.path))
)


# --- the typed configuration ------------------------------------------------------------------


@dataclass(frozen=True)
class GeneralConfig:
    work_dir: Path
    tls_cert_file: str | None
    tls_key_file: str | None


@dataclass(frozen=True)
class PostgresConfig:
    host: str = "127.0.0.1"
    port: int = 15432
    user: str = "kuma"
    password: str = "kuma"
    db_name: str = "kuma"
    tls_mode: str = "disable"  # Kuma's names: disable, verifyNone, verifyCa, verifyFull
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    tls_ca_path: str | None = None
    max_open_connections: int = 50  # 0: unlimited
    min_open_connections: int = 0
    connection_timeout: int = 5  # seconds
    max_connection_lifetime: float = 3600.0  # seconds
    max_connection_idle_time: float = 1800.0
    health_check_interval: float = 30.0
    resync_interval: float = 5.0


@dataclass(frozen=True)
class StoreConfig:
    type: StoreType
    postgres: PostgresConfig


@dataclass(frozen=True)
class DpServerLimits:
    """Bounds on what clients of the DP server may hold (docs/security.md); seconds and bytes."""

    read_header_timeout: float = 5.0  # the first request's headers, from the TLS handshake on
    read_timeout: float = 10.0  # a request body, from its first byte to its last
    idle_timeout: float = 120.0  # an HTTP/1.1 connection on which no byte moves
    max_request_body_bytes: int = 1 << 20
    max_connections: int = 10_000
    max_connections_per_source: int = 1_000


@dataclass(frozen=True)
class XdsServerLimits:
    max_receive_message_bytes: int = 4 << 20  # gRPC's (and Kuma's Go server's) default
    max_streams: int = 10_000  # ADS streams of the whole control plane
    max_streams_per_connection: int = 100  # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS
    request_queue_size: int = 64  # requests read ahead of processing, per stream
    send_timeout: float = 60.0  # a response the client does not take ends its stream
    # Not a setting: Envoy sends its first request at once; a stream without one is not kept.
    first_request_timeout: float = 10.0


@dataclass(frozen=True)
class DpServerConfig:
    port: int
    dp_proxy_authn: DpProxyAuthnType
    # Where bootstraps send Envoy for ADS (Kuma's bootstrapServer.params.xdsHost/xdsPort): ""/0 =
    # the host the agent used and this port.
    xds_host: str = ""
    xds_port: int = 0
    limits: DpServerLimits = DpServerLimits()
    xds_limits: XdsServerLimits = XdsServerLimits()


@dataclass(frozen=True)
class ApiServerConfig:
    http_port: int
    http_interface: str
    https_port: int
    localhost_is_admin: bool
    authn_type: ApiAuthnType = "tokens"
    bootstrap_admin_token: bool = True  # the admin user token, as global secret admin-user-token
    token_issuer: bool = True  # POST /tokens/user
    https_enabled: bool = True
    https_interface: str = DEFAULT_API_HTTP_INTERFACE
    https_tls_cert_file: str | None = None  # None: the general TLS pair (KUMA_GENERAL_TLS_*)
    https_tls_key_file: str | None = None


@dataclass(frozen=True)
class DiagnosticsConfig:
    server_port: int  # /metrics, /ready, /healthy on every interface, as Kuma's


@dataclass(frozen=True)
class XdsConfig:
    dataplane_deregistration_delay: float  # seconds
    token_reverify_interval: float = 10.0  # seconds


@dataclass(frozen=True)
class DefaultsConfig:
    skip_mesh_creation: bool


@dataclass(frozen=True)
class DnsServerConfig:
    """Service names: `<service>.<domain>` on a virtual IP from `cidr`, reachable on each port the
    service's inbounds expose and on `service_vip_port`."""

    domain: str
    cidr: ipaddress.IPv4Network
    service_vip_enabled: bool
    service_vip_port: int
    vip_release_grace_period: float  # seconds
    vip_refresh_interval: float  # seconds: how often every mesh's VIPs are recomputed


@dataclass(frozen=True)
class MonitoringAssignmentConfig:
    """Prometheus discovery of the proxies' metrics endpoints (control_plane/monitoring/)."""

    enabled: bool
    port: int


@dataclass(frozen=True)
class CpConfig:
    general: GeneralConfig
    store: StoreConfig
    dp_server: DpServerConfig
    api_server: ApiServerConfig
    diagnostics: DiagnosticsConfig
    xds: XdsConfig
    defaults: DefaultsConfig
    dns_server: DnsServerConfig
    monitoring: MonitoringAssignmentConfig = MonitoringAssignmentConfig(
        True, DEFAULT_MONITORING_ASSIGNMENT_PORT
    )
    # Keys of the YAML file that Kuma knows but this control plane ignores, e.g. "reports.enabled".
    ignored_keys: tuple[str, ...] = ()


def default_config() -> CpConfig:
    return load_config(None, env={})


def load_config(path: str | None = None, env: Mapping[str, str] = os.environ) -> CpConfig:
    """Build the configuration; raise ConfigError naming the key or variable of a bad value."""
    values: dict[tuple[str, ...], Any] = {
        s.path: _parse(s, s.default, "default of " + s.key) for s in _SETTINGS
    }
    ignored: list[str] = []
    if path is not None:
        document = _read_yaml(path)
        for key_path, raw in _flatten(document, (), ignored, path):
            setting = _BY_PATH[key_path]
            values[key_path] = _parse(setting, raw, f"{setting.key} in {path}")
    for setting in _SETTINGS:
        raw = env.get(setting.env)
        if raw is not None and raw != "":
            values[setting.path] = _parse(setting, raw, f"environment variable {setting.env}")
    ignored.extend(_foreign_env(env))
    config = _build(values, tuple(ignored))
    _check_consistency(config)
    return config


def _check_consistency(config: CpConfig) -> None:
    general, api = config.general, config.api_server
    if (general.tls_cert_file is None) != (general.tls_key_file is None):
        raise ConfigError(
            "general.tlsCertFile (KUMA_GENERAL_TLS_CERT_FILE) and general.tlsKeyFile "
            "(KUMA_GENERAL_TLS_KEY_FILE) must be given together"
        )
    if (api.https_tls_cert_file is None) != (api.https_tls_key_file is None):
        raise ConfigError(
            "apiServer.https.tlsCertFile (KUMA_API_SERVER_HTTPS_TLS_CERT_FILE) and "
            "apiServer.https.tlsKeyFile "
            "(KUMA_API_SERVER_HTTPS_TLS_KEY_FILE) must be given together"
        )


def _parse(setting: _Setting, raw: Any, where: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid value for {where}: {exc}") from None


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = safe_yaml.safe_load(handle.read())
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {yaml_error_message(exc)}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"configuration file {path} must be a YAML mapping of sections, not {document!r}")
    return document


def _foreign_env(env: Mapping[str, str]) -> list[str]:
    """The `KUMA_*` variables Kuma has but kuma-cp does not use (to warn about); ConfigError for one
    no Kuma program has."""
    ignored = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in _BY_ENV:
            continue
        if name in KUMA_CP_ENV:
            ignored.append(f"{name} (environment)")
        elif name in KUMA_OTHER_ENV:
            ignored.append(f"{name} (environment; a kuma-dp setting)")
        else:
            raise ConfigError(
                f"unknown environment variable {name}: no Kuma setting has this name{_hint(name)}"
            )
    return ignored


def _hint(name: str) -> str:
    known = (
        [*_BY_ENV, *KUMA_CP_ENV] if name.startswith(ENV_PREFIX) else [*KUMA_CP_KEYS, *map(_dotted, _BY_PATH)]
    )
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _check_kuma_keys(node: Any, dotted: str, source: str) -> None:
    """Everything below a Kuma key we ignore must still be Kuma's (a typo there is refused too)."""
    if dotted in KUMA_CP_OPEN_KEYS or not isinstance(node, dict):
        return
    for key, value in node.items():
        path = f"{dotted}.{key}"
        if path not in KUMA_CP_KEYS:
            raise ConfigError(f"unknown key {path!r} in {source}: no Kuma setting has this name{_hint(path)}")
        _check_kuma_keys(value, path, source)


def _flatten(
    node: dict[str, Any], prefix: tuple[str, ...], ignored: list[str], source: str
) -> list[tuple[tuple[str, ...], Any]]:
    """The (path, value) pairs of known settings; unknown keys below a known section go to `ignored`."""
    found: list[tuple[tuple[str, ...], Any]] = []
    for key, value in node.items():
        path = (*prefix, str(key))
        dotted = ".".join(path)
        if path in _BY_PATH:
            if value is not None:  # `key:` with no value means "not set", as in Kuma's defaults file
                found.append((path, value))
        elif path in _BRANCHES:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(
                    f"invalid value for {dotted} in {source}: expected a mapping, got {value!r}"
                )
            found.extend(_flatten(value, path, ignored, source))
        elif dotted in KUMA_CP_KEYS:
            _check_kuma_keys(value, dotted, source)
            ignored.append(dotted)
        elif not prefix:
            known = ", ".join(sorted(_SECTIONS))
            raise ConfigError(f"unknown key {dotted!r} in {source} (known sections: {known}){_hint(dotted)}")
        else:
            raise ConfigError(
                f"unknown key {dotted!r} in {source}: no Kuma setting has this name{_hint(dotted)}"
            )
    return found


def _postgres_config(v: Callable[..., Any]) -> PostgresConfig:
    def pg(name: str) -> Any:
        return v("store", "postgres", *name.split("."))

    config = PostgresConfig(
        host=pg("host"),
        port=pg("port"),
        user=pg("user"),
        password=pg("password"),
        db_name=pg("dbName"),
        tls_mode=pg("tls.mode"),
        tls_cert_path=pg("tls.certPath"),
        tls_key_path=pg("tls.keyPath"),
        tls_ca_path=pg("tls.caPath"),
        max_open_connections=pg("maxOpenConnections"),
        min_open_connections=pg("minOpenConnections"),
        connection_timeout=pg("connectionTimeout"),
        max_connection_lifetime=pg("maxConnectionLifetime"),
        max_connection_idle_time=pg("maxConnectionIdleTime"),
        health_check_interval=pg("healthCheckInterval"),
        resync_interval=pg("resyncInterval"),
    )
    if config.max_open_connections and config.min_open_connections > config.max_open_connections:
        raise ConfigError(
            "store.postgres.minOpenConnections (KUMA_STORE_POSTGRES_MIN_OPEN_CONNECTIONS) must not exceed "
            "store.postgres.maxOpenConnections (KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS)"
        )
    if (config.tls_cert_path is None) != (config.tls_key_path is None):
        raise ConfigError(
            "store.postgres.tls.certPath (KUMA_STORE_POSTGRES_TLS_CERT_PATH) and store.postgres.tls.keyPath "
            "(KUMA_STORE_POSTGRES_TLS_KEY_PATH) must be given together"
        )
    return config


def _build(values: dict[tuple[str, ...], Any], ignored: tuple[str, ...]) -> CpConfig:
    def v(*path: str) -> Any:
        return values[path]

    return CpConfig(
        general=GeneralConfig(
            work_dir=v("general", "workDir"),
            tls_cert_file=v("general", "tlsCertFile"),
            tls_key_file=v("general", "tlsKeyFile"),
        ),
        store=StoreConfig(
            type=v("store", "type"),
            postgres=_postgres_config(v),
        ),
        dp_server=DpServerConfig(
            port=v("dpServer", "port"),
            dp_proxy_authn=v("dpServer", "authn", "dpProxy", "type"),
            xds_host=v("bootstrapServer", "params", "xdsHost"),
            xds_port=v("bootstrapServer", "params", "xdsPort"),
            limits=DpServerLimits(
                read_header_timeout=v("dpServer", "readHeaderTimeout"),
                read_timeout=v("dpServer", "readTimeout"),
                idle_timeout=v("dpServer", "idleTimeout"),
                max_request_body_bytes=v("dpServer", "maxRequestBodyBytes"),
                max_connections=v("dpServer", "maxConnections"),
                max_connections_per_source=v("dpServer", "maxConnectionsPerSource"),
            ),
            xds_limits=XdsServerLimits(
                max_receive_message_bytes=v("xdsServer", "maxReceiveMessageBytes"),
                max_streams=v("xdsServer", "maxStreams"),
                max_streams_per_connection=v("xdsServer", "maxStreamsPerConnection"),
                request_queue_size=v("xdsServer", "requestQueueSize"),
                send_timeout=v("xdsServer", "sendTimeout"),
            ),
        ),
        api_server=ApiServerConfig(
            http_port=v("apiServer", "http", "port"),
            http_interface=v("apiServer", "http", "interface"),
            https_port=v("apiServer", "https", "port"),
            localhost_is_admin=v("apiServer", "authn", "localhostIsAdmin"),
            authn_type=v("apiServer", "authn", "type"),
            bootstrap_admin_token=v("apiServer", "authn", "tokens", "bootstrapAdminToken"),
            token_issuer=v("apiServer", "authn", "tokens", "enableIssuer"),
            https_enabled=v("apiServer", "https", "enabled"),
            https_interface=v("apiServer", "https", "interface"),
            https_tls_cert_file=v("apiServer", "https", "tlsCertFile"),
            https_tls_key_file=v("apiServer", "https", "tlsKeyFile"),
        ),
        diagnostics=DiagnosticsConfig(server_port=v("diagnostics", "serverPort")),
        xds=XdsConfig(
            dataplane_deregistration_delay=v("xds", "dataplaneDeregistrationDelay"),
            token_reverify_interval=v("xds", "tokenReverifyInterval"),
        ),
        defaults=DefaultsConfig(skip_mesh_creation=v("defaults", "skipMeshCreation")),
        dns_server=DnsServerConfig(
            domain=v("dnsServer", "domain"),
            cidr=v("dnsServer", "CIDR"),
            service_vip_enabled=v("dnsServer", "serviceVipEnabled"),
            service_vip_port=v("dnsServer", "serviceVipPort"),
            vip_release_grace_period=v("dnsServer", "vipReleaseGracePeriod"),
            vip_refresh_interval=v("runtime", "universal", "vipRefreshInterval"),
        ),
        monitoring=MonitoringAssignmentConfig(
            enabled=v("monitoringAssignmentServer", "enabled"), port=v("monitoringAssignmentServer", "port")
        ),
        ignored_keys=ignored,
    )
