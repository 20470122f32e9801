"""The CNI protocol (spec 1.0.0, answering 0.4.0 and 0.3.x too): pure functions, no effects.

Environment and stdin in; results and the spec's error object out. Everything here raises
`CniError(code, msg, details)`, which the entry point prints as the spec's error JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kuma_common import safe_json

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
LATEST_VERSION = "1.0.0"
VERSIONS_WITH_CHECK = ("0.4.0", "1.0.0")  # CHECK arrived in 0.4.0
VERSIONS_WITH_IP_VERSION = ("0.3.0", "0.3.1", "0.4.0")  # `ips[].version` was dropped in 1.0.0

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),  # the namespace may be gone already
    "VERSION": (),
}

# The spec's well-known error codes; 100+ are the plugin's own.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
RULES_NOT_APPLIED = 100  # the firewall refused or failed: nothing of ours is left half-applied
RULES_NOT_IN_PLACE = 101  # CHECK: the namespace does not hold the rules it should


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}


def command(environ: Mapping[str, str]) -> str:
    name = environ.get("CNI_COMMAND", "")
    if name not in COMMANDS:
        known = ", ".join(COMMANDS)
        raise CniError(INVALID_ENVIRONMENT, f'unknown CNI_COMMAND "{name}"', f"kuma-cni supports {known}")
    missing = [key for key in REQUIRED_ENV[name] if not environ.get(key)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"{name} needs the environment variables {', '.join(missing)}")
    return name


def parse_cni_args(text: str) -> dict[str, str]:
    """`CNI_ARGS`: `K=V;K=V` (runtimes also send `IgnoreUnknown=1`, `K8S_POD_NAMESPACE=...`)."""
    args: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CniError(INVALID_ENVIRONMENT, f'CNI_ARGS: "{pair}" is not KEY=VALUE', f"CNI_ARGS={text}")
        args[key.strip()] = value.strip()
    return args


def parse_config(data: bytes) -> dict[str, Any]:
    """The network configuration on stdin: a JSON object with a supported `cniVersion`, `name`, `type`."""
    try:
        conf = safe_json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODING_FAILURE, f"the network configuration on stdin is not JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "the network configuration on stdin is not a JSON object")
    version = conf.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f'incompatible CNI version "{version}"',
            f"kuma-cni supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    for key in ("name", "type"):
        if not isinstance(conf.get(key), str) or not conf[key]:
            raise CniError(INVALID_CONFIG, f'the network configuration has no "{key}"')
    return conf


def error_version(data: bytes) -> str:
    """The cniVersion to answer an error with: the config's when it names a supported one."""
    try:
        version = safe_json.loads(data).get("cniVersion")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return LATEST_VERSION
    return version if version in SUPPORTED_VERSIONS else LATEST_VERSION


def previous_result(conf: Mapping[str, Any]) -> dict[str, Any]:
    """A chained ADD must receive the result of the plugins before it."""
    prev = conf.get("prevResult")
    if prev is None:
        raise CniError(
            INVALID_CONFIG,
            "kuma-cni is a chained plugin: the configuration has no prevResult",
            "list kuma-cni after the interface plugin (bridge, ptp, ...) in a .conflist",
        )
    if not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult is not a JSON object")
    return prev


def convert_result(result: Mapping[str, Any], to_version: str) -> dict[str, Any]:
    """The result in `to_version`'s format: 0.3.x/0.4.0 carry `ips[].version`, 1.0.0 does not."""
    converted = {**result, "cniVersion": to_version}
    ips = result.get("ips")
    if isinstance(ips, list):
        converted["ips"] = [_convert_ip(ip, to_version) for ip in ips]
    return converted


def _convert_ip(ip: object, to_version: str) -> object:
    if not isinstance(ip, dict):
        return ip
    ip = dict(ip)
    if to_version in VERSIONS_WITH_IP_VERSION:
        ip.setdefault("version", "6" if ":" in str(ip.get("address", "")) else "4")
    else:
        ip.pop("version", None)
    return ip


def version_result(data: bytes) -> dict[str, Any]:
    return {"cniVersion": error_version(data), "supportedVersions": list(SUPPORTED_VERSIONS)}
