"""RunConfig: every setting of `kuma-dp run`, merged once from flags and environment.

Precedence is Kuma's: a flag wins over its environment variable, which wins over the default.
Nothing below the CLI reads the environment; components get this frozen object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuma_common.durations import DurationError, parse_duration, parse_positive_duration
from kuma_dp import constants as c
from kuma_dp.dataplane_file import dataplane_json
from kuma_dp.errors import ConfigError


@dataclass(frozen=True)
class RunFlags:
    """What the user typed; None means the flag was not given."""

    cp_address: str | None = None
    ca_cert_file: str | None = None
    name: str | None = None
    mesh: str | None = None
    proxy_type: str = c.DEFAULT_PROXY_TYPE
    dataplane_token: str | None = None
    dataplane_token_file: str | None = None
    binary_path: str | None = None
    concurrency: int | None = None
    drain_time_s: float | None = None
    work_dir: str | None = None
    envoy_log_level: str = c.DEFAULT_ENVOY_LOG_LEVEL
    log_level: str = c.DEFAULT_LOG_LEVEL
    max_envoy_restarts: int = c.DEFAULT_MAX_ENVOY_RESTARTS
    envoy_restart_window_s: float | None = None
    dns_enabled: bool | None = None
    dns_proxy_port: int | None = None
    dns_coredns_port: int | None = None


@dataclass(frozen=True)
class RunConfig:
    cp_address: str
    name: str
    mesh: str
    proxy_type: str
    ca_cert_file: Path | None = None
    ca_cert_pem: str | None = None
    token: str | None = field(default=None, repr=False)  # never printed
    token_path: Path | None = None
    dataplane_json: str | None = None
    binary_path: Path | None = None
    concurrency: int | None = None
    drain_time_s: float = 30.0
    work_dir: Path | None = None
    envoy_log_level: str = c.DEFAULT_ENVOY_LOG_LEVEL
    log_level: str = c.DEFAULT_LOG_LEVEL
    readiness_address: str = c.DEFAULT_READINESS_ADDRESS
    readiness_port: int = c.DEFAULT_READINESS_PORT
    retry_backoff_s: float = 3.0
    retry_max_duration_s: float = 300.0
    max_envoy_restarts: int = c.DEFAULT_MAX_ENVOY_RESTARTS
    envoy_restart_window_s: float = 60.0
    dns_enabled: bool = True
    dns_port: int = c.DEFAULT_DNS_PORT
    dns_port_source: str = "the default"  # "from <flag or variable>", for error messages
    metrics_app_timeout_s: float = c.DEFAULT_METRICS_APPLICATION_TIMEOUT_S


def build_run_config(
    flags: RunFlags, env: Mapping[str, str], dataplane: Mapping[str, Any] | None = None
) -> RunConfig:
    """Merge flags, environment and the Dataplane resource into one RunConfig (ConfigError if invalid)."""
    cp_address = (_pick(flags.cp_address, env, c.ENV_CP_ADDRESS) or c.DEFAULT_CP_ADDRESS).rstrip("/")
    if cp_address.lower().startswith("http://"):
        raise ConfigError(
            f'--cp-address "{cp_address}": plain http:// is refused (the dataplane token and the '
            f"certificate request would cross the network in clear); use https://, "
            f"e.g. {c.DEFAULT_CP_ADDRESS}"
        )
    if not cp_address.lower().startswith("https://"):
        raise ConfigError(f'--cp-address "{cp_address}": expected a URL such as {c.DEFAULT_CP_ADDRESS}')
    ca_file, ca_pem = _ca_source(flags, env)
    token, token_path = _token_source(flags, env)
    name, mesh, resource = _identity(flags, env, dataplane)
    binary = _pick(flags.binary_path, env, c.ENV_BINARY_PATH)
    work_dir = flags.work_dir
    dns_port, dns_port_source = _dns_port(flags, env)
    return RunConfig(
        cp_address=cp_address,
        name=name,
        mesh=mesh,
        proxy_type=flags.proxy_type,
        ca_cert_file=Path(ca_file) if ca_file else None,
        ca_cert_pem=ca_pem,
        token=token,
        token_path=Path(token_path) if token_path else None,
        dataplane_json=dataplane_json(resource) if resource is not None else None,
        binary_path=Path(binary) if binary else None,
        concurrency=flags.concurrency,
        drain_time_s=_flag_duration(flags.drain_time_s, c.DEFAULT_DRAIN_TIME),
        work_dir=Path(work_dir).absolute() if work_dir else None,
        envoy_log_level=flags.envoy_log_level,
        log_level=flags.log_level,
        readiness_address=env.get(c.ENV_READINESS_ADDRESS) or c.DEFAULT_READINESS_ADDRESS,
        readiness_port=_env_port(env, c.ENV_READINESS_PORT, c.DEFAULT_READINESS_PORT),
        retry_backoff_s=_env_duration(env, c.ENV_RETRY_BACKOFF, c.DEFAULT_RETRY_BACKOFF),
        retry_max_duration_s=_env_duration(env, c.ENV_RETRY_MAX_DURATION, c.DEFAULT_RETRY_MAX_DURATION),
        max_envoy_restarts=flags.max_envoy_restarts,
        envoy_restart_window_s=_flag_duration(flags.envoy_restart_window_s, c.DEFAULT_ENVOY_RESTART_WINDOW),
        dns_enabled=_dns_enabled(flags, env),
        dns_port=dns_port,
        dns_port_source=dns_port_source,
        metrics_app_timeout_s=_env_duration(
            env, c.ENV_METRICS_APPLICATION_TIMEOUT, c.DEFAULT_METRICS_APPLICATION_TIMEOUT
        ),
    )


def _pick(flag: str | None, env: Mapping[str, str], var: str) -> str | None:
    """Flag over environment; an empty environment value counts as unset."""
    if flag is not None:
        return flag
    return env.get(var) or None


def _ca_source(flags: RunFlags, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    if flags.ca_cert_file is not None:
        return flags.ca_cert_file, None
    ca_file, ca_pem = env.get(c.ENV_CA_CERT_FILE) or None, env.get(c.ENV_CA_CERT) or None
    if ca_file and ca_pem:
        raise ConfigError(f"{c.ENV_CA_CERT_FILE} and {c.ENV_CA_CERT} are both set; set one")
    return ca_file, ca_pem


def _token_source(flags: RunFlags, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    if flags.dataplane_token is not None and flags.dataplane_token_file is not None:
        raise ConfigError("--dataplane-token and --dataplane-token-file are mutually exclusive; give one")
    if flags.dataplane_token is not None or flags.dataplane_token_file is not None:
        return flags.dataplane_token, flags.dataplane_token_file
    token, path = env.get(c.ENV_TOKEN) or None, env.get(c.ENV_TOKEN_PATH) or None
    if token and path:
        raise ConfigError(f"{c.ENV_TOKEN} and {c.ENV_TOKEN_PATH} are both set; set one")
    return token, path


def _identity(
    flags: RunFlags, env: Mapping[str, str], dataplane: Mapping[str, Any] | None
) -> tuple[str, str, dict[str, Any] | None]:
    """Name and mesh from flag/env, defaulted from the resource; a disagreement names both sides."""
    name_given = _given(flags.name, env, c.ENV_NAME, "--name")
    mesh_given = _given(flags.mesh, env, c.ENV_MESH, "--mesh")
    if dataplane is None:
        if name_given is None:
            raise ConfigError(
                f"a dataplane name is required: give --name (or {c.ENV_NAME}) or --dataplane-file"
            )
        return name_given[0], mesh_given[0] if mesh_given else c.DEFAULT_MESH, None
    resource = dict(dataplane)
    expected_type = c.RESOURCE_TYPE_BY_PROXY_TYPE[flags.proxy_type]
    actual_type = resource.setdefault("type", expected_type)
    if actual_type != expected_type:
        raise ConfigError(
            f'the resource has type "{actual_type}" but --proxy-type {flags.proxy_type} '
            f'expects "{expected_type}"'
        )
    name = _merge_field(resource, "name", name_given, default=None)
    mesh = _merge_field(resource, "mesh", mesh_given, default=c.DEFAULT_MESH)
    return name, mesh, resource


def _given(flag: str | None, env: Mapping[str, str], var: str, flag_name: str) -> tuple[str, str] | None:
    """(value, where it came from) or None."""
    if flag:
        return flag, flag_name
    if env.get(var):
        return env[var], var
    return None


def _merge_field(
    resource: dict[str, Any], key: str, given: tuple[str, str] | None, default: str | None
) -> str:
    in_resource = resource.get(key)
    if in_resource is not None and not isinstance(in_resource, str):
        raise ConfigError(f"the Dataplane resource's {key} must be a string, got {in_resource!r}")
    if given is not None and in_resource and given[0] != in_resource:
        raise ConfigError(
            f'{given[1]} "{given[0]}" conflicts with the Dataplane resource\'s {key} "{in_resource}"'
        )
    value = in_resource or (given[0] if given else default)
    if not value:
        raise ConfigError(f"a dataplane {key} is required: set it in the Dataplane resource or give --{key}")
    resource[key] = value
    return value


def _flag_duration(value: float | None, default: str) -> float:
    return value if value is not None else parse_duration(default)


def _env_duration(env: Mapping[str, str], var: str, default: str) -> float:
    text = env.get(var) or default
    try:
        return parse_positive_duration(text)
    except DurationError as exc:
        raise ConfigError(f"{var}: {exc}") from None


def _env_port(env: Mapping[str, str], var: str, default: int, allow_zero: bool = False) -> int:
    text = env.get(var)
    if not text:
        return default
    lowest = 0 if allow_zero else 1
    if not text.isdigit() or not lowest <= int(text) < 65536:
        raise ConfigError(f'{var}: expected a port number {lowest}-65535, got "{text}"')
    return int(text)


_TRUE = ("1", "t", "true")
_FALSE = ("0", "f", "false")


def parse_bool(text: str, what: str) -> bool:
    """Go's strconv.ParseBool, as Kuma reads its boolean variables."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ConfigError(f'{what}: expected true or false, got "{text}"')


def _dns_enabled(flags: RunFlags, env: Mapping[str, str]) -> bool:
    if flags.dns_enabled is not None:
        return flags.dns_enabled
    text = env.get(c.ENV_DNS_ENABLED)
    return parse_bool(text, c.ENV_DNS_ENABLED) if text else True


def _dns_port(flags: RunFlags, env: Mapping[str, str]) -> tuple[int, str]:
    """Kuma 2.14's rule: the embedded proxy's port (KUMA_DNS_PROXY_PORT) when it is not 0, else the
    CoreDNS port (the one iptables redirects DNS to), 15053 by default; each flag over its variable."""
    candidates = (
        (flags.dns_proxy_port, "--dns-proxy-port", c.ENV_DNS_PROXY_PORT),
        (flags.dns_coredns_port, "--dns-coredns-port", c.ENV_DNS_CORE_DNS_PORT),
    )
    for flag_value, flag_name, var in candidates:
        if flag_value is not None:
            value, source = flag_value, f"from {flag_name}"
        elif env.get(var):
            value, source = _env_port(env, var, 0, allow_zero=True), f"from {var}"
        else:
            continue
        if value != 0:
            return value, source
    return c.DEFAULT_DNS_PORT, "the default"
