"""Where a transparent-proxy setting can come from, under Kuma's names, and how the sources merge.

One table (`FIELDS`) names every setting as a CLI flag, a YAML key of Kuma's transparent-proxy
config file, an environment variable and, where Kuma has one, a pod annotation. Each loader turns
its source into a *layer* {field: (raw value, where it came from)}; `build_config` merges layers
(later wins) and parses every value once, so an error always names the flag/key/annotation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from transparent_proxy import config as cfg
from transparent_proxy.config import TProxyConfig, TProxyConfigError

Layer = dict[str, tuple[object, str]]
ENV_PREFIX = "KUMA_TRANSPARENT_PROXY_"


@dataclass(frozen=True)
class Field:
    name: str  # TProxyConfig attribute
    flag: str
    yaml_key: str  # dotted path in Kuma's config file
    env: str
    parse: Callable[[object, str], Any]
    annotation: str | None = None


def _split_semicolons(value: object, where: str) -> tuple[cfg.UidPortExclusion, ...]:
    # Annotations and env carry several `proto:ports:uids` entries in one string, `;`-separated.
    if isinstance(value, str):
        value = [part for part in value.split(";") if part.strip()]
    return cfg.parse_uid_exclusions(value, where)


def _dns_switch(value: object, where: str) -> bool:
    return cfg.parse_bool(value, where)


FIELDS: tuple[Field, ...] = (
    Field(
        "inbound_port",
        "--redirect-inbound-port",
        "redirect.inbound.port",
        "REDIRECT_INBOUND_PORT",
        cfg.parse_port,
        "kuma.io/transparent-proxying-inbound-port",
    ),
    Field(
        "outbound_port",
        "--redirect-outbound-port",
        "redirect.outbound.port",
        "REDIRECT_OUTBOUND_PORT",
        cfg.parse_port,
        "kuma.io/transparent-proxying-outbound-port",
    ),
    Field("proxy_uid", "--kuma-dp-user", "kumaDPUser", "KUMA_DP_USER", cfg.parse_user, "kuma.io/sidecar-uid"),
    Field(
        "ip_family_mode",
        "--ip-family-mode",
        "ipFamilyMode",
        "IP_FAMILY_MODE",
        cfg.parse_ip_family_mode,
        "kuma.io/transparent-proxying-ip-family-mode",
    ),
    Field(
        "exclude_inbound_ports",
        "--exclude-inbound-ports",
        "redirect.inbound.excludePorts",
        "REDIRECT_INBOUND_EXCLUDE_PORTS",
        cfg.parse_port_list,
        "traffic.kuma.io/exclude-inbound-ports",
    ),
    Field(
        "exclude_outbound_ports",
        "--exclude-outbound-ports",
        "redirect.outbound.excludePorts",
        "REDIRECT_OUTBOUND_EXCLUDE_PORTS",
        cfg.parse_port_list,
        "traffic.kuma.io/exclude-outbound-ports",
    ),
    Field(
        "exclude_inbound_ips",
        "--exclude-inbound-ips",
        "redirect.inbound.excludePortsForIPs",
        "REDIRECT_INBOUND_EXCLUDE_PORTS_FOR_IPS",
        cfg.parse_cidr_list,
        "traffic.kuma.io/exclude-inbound-ips",
    ),
    Field(
        "exclude_outbound_ips",
        "--exclude-outbound-ips",
        "redirect.outbound.excludePortsForIPs",
        "REDIRECT_OUTBOUND_EXCLUDE_PORTS_FOR_IPS",
        cfg.parse_cidr_list,
        "traffic.kuma.io/exclude-outbound-ips",
    ),
    Field(
        "exclude_outbound_ports_for_uids",
        "--exclude-outbound-ports-for-uids",
        "redirect.outbound.excludePortsForUIDs",
        "REDIRECT_OUTBOUND_EXCLUDE_PORTS_FOR_UIDS",
        _split_semicolons,
        "traffic.kuma.io/exclude-outbound-ports-for-uids",
    ),
    Field(
        "redirect_dns",
        "--redirect-dns",
        "redirect.dns.enabled",
        "REDIRECT_DNS_ENABLED",
        _dns_switch,
        "kuma.io/builtin-dns",
    ),
    # Kuma's CNI and injector read `kuma.io/builtin-dns` as "capture every query" (a pod's resolv.conf
    # is not visible to the node), so the annotation sets both switches, `disabled` turning both off.
    Field(
        "dns_capture_all",
        "--redirect-all-dns-traffic",
        "redirect.dns.captureAll",
        "REDIRECT_DNS_CAPTURE_ALL",
        cfg.parse_bool,
        "kuma.io/builtin-dns",
    ),
    Field(
        "dns_port",
        "--redirect-dns-port",
        "redirect.dns.port",
        "REDIRECT_DNS_PORT",
        cfg.parse_port,
        "kuma.io/builtin-dns-port",
    ),
    Field(  # Kuma has the key and the variable; the flag is ours, named like --redirect-dns-port
        "resolv_config_path",
        "--redirect-dns-resolv-config-path",
        "redirect.dns.resolvConfigPath",
        "REDIRECT_DNS_RESOLV_CONFIG_PATH",
        cfg.parse_path,
    ),
    Field(
        "skip_dns_conntrack_zone_split",
        "--skip-dns-conntrack-zone-split",
        "redirect.dns.skipConntrackZoneSplit",
        "REDIRECT_DNS_SKIP_CONNTRACK_ZONE_SPLIT",
        cfg.parse_bool,
    ),
    Field(
        "drop_invalid_packets",
        "--drop-invalid-packets",
        "dropInvalidPackets",
        "DROP_INVALID_PACKETS",
        cfg.parse_bool,
    ),
    Field("wait_s", "--wait", "wait", "WAIT", cfg.parse_seconds),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}
FIELD_BY_YAML_KEY = {f.yaml_key: f for f in FIELDS}


def build_config(*layers: Layer) -> TProxyConfig:
    """Merge layers (later wins), parse every value, check the whole."""
    merged: Layer = {}
    for layer in layers:
        merged.update(layer)
    values = {name: FIELD_BY_NAME[name].parse(raw, where) for name, (raw, where) in merged.items()}
    values.setdefault("proxy_uid", cfg.default_proxy_uid())
    return cfg.check_consistent(TProxyConfig(**values))


def flag_layer(given: Mapping[str, object | None]) -> Layer:
    """{field name: value or None (not given)} from a CLI; errors name the flag."""
    layer: Layer = {}
    for name, value in given.items():
        if value is None or value == ():
            continue
        layer[name] = (value, FIELD_BY_NAME[name].flag)
    return layer


def env_layer(environ: Mapping[str, str]) -> Layer:
    layer: Layer = {}
    for f in FIELDS:
        key = ENV_PREFIX + f.env
        if environ.get(key, "").strip():
            layer[f.name] = (environ[key], key)
    return layer


def annotation_layer(annotations: Mapping[str, str]) -> Layer:
    """Kuma's pod annotations (init container, CNI); unrelated annotations are ignored."""
    layer: Layer = {}
    for f in FIELDS:
        if f.annotation and f.annotation in annotations:
            layer[f.name] = (annotations[f.annotation], f"annotation {f.annotation}")
    return layer


def yaml_layer(text: str, source: str) -> Layer:
    """Kuma's transparent-proxy config file; an unknown key is an error naming it."""
    import yaml  # noqa: PLC0415 - on first use: ~25 ms the CNI plugin does not pay

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TProxyConfigError(f"{source} is not valid YAML: {_yaml_problem(exc)}") from None
    return mapping_layer(document, source)


def mapping_layer(document: object, source: str) -> Layer:
    """Kuma's transparent-proxy config keys, already parsed (YAML file, a CNI config's JSON object)."""
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise TProxyConfigError(f"{source}: expected a mapping of settings, got {type(document).__name__}")
    layer: Layer = {}
    for key, value in _flatten(document):
        f = FIELD_BY_YAML_KEY.get(key)
        if f is None:
            known = ", ".join(sorted(FIELD_BY_YAML_KEY))
            raise TProxyConfigError(f'{source}: unknown key "{key}" (supported: {known})')
        if value is not None:
            layer[f.name] = (value, f"{source}: {key}")
    return layer


def _flatten(document: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in FIELD_BY_YAML_KEY:
            items.extend(_flatten(value, path + "."))
        else:
            items.append((path, value))
    return items


def _yaml_problem(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem
