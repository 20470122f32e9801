"""What the control plane says to merge (MeshMetric, through the proxy's own Envoy): parsed from
the JSON of kuma_common/dp_contract.py into frozen settings. Pure."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_APPLICATION_ADDRESS = "127.0.0.1"
PROFILES = ("All", "Basic", "None")  # Kuma's order when several are appended


class SettingsError(ValueError):
    """The body is not the contract's."""


@dataclass(frozen=True)
class Selector:
    type: str  # Prefix | Regex | Exact | Contains
    match: str

    def matches(self, value: str) -> bool:
        if self.type == "Prefix":
            return value.startswith(self.match)
        if self.type == "Contains":
            return self.match in value
        if self.type == "Exact":
            return value == self.match
        return _regex(self.match).search(value) is not None  # Go's MatchString: a search


_REGEXES: dict[str, re.Pattern[str]] = {}


def _regex(text: str) -> re.Pattern[str]:
    compiled = _REGEXES.get(text)
    if compiled is None:
        compiled = _REGEXES[text] = re.compile(text)
    return compiled


@dataclass(frozen=True)
class Application:
    name: str
    address: str
    port: int
    path: str

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}{self.path}"


@dataclass(frozen=True)
class MetricsSettings:
    applications: tuple[Application, ...] = ()
    profiles: tuple[str, ...] = ()  # appendProfiles' names; empty: Kuma's default (Basic)
    include: tuple[Selector, ...] = ()
    exclude: tuple[Selector, ...] = ()
    include_unused: bool = False


def parse_settings(body: bytes) -> MetricsSettings:
    """The settings in `body`; SettingsError naming what is wrong."""
    try:
        document = json.loads(body)
        metrics = document["observability"]["metrics"]
        sidecar = metrics.get("sidecar") or {}
        profiles = sidecar.get("profiles") or {}
        return MetricsSettings(
            applications=tuple(_application(a) for a in metrics.get("applications") or []),
            profiles=tuple(_profile(p) for p in profiles.get("appendProfiles") or []),
            include=tuple(_selector(s) for s in profiles.get("include") or []),
            exclude=tuple(_selector(s) for s in profiles.get("exclude") or []),
            include_unused=bool(sidecar.get("includeUnused", False)),
        )
    except SettingsError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SettingsError(f"not the metrics settings contract: {type(exc).__name__}: {exc}") from None


def _application(raw: dict[str, Any]) -> Application:
    port = int(raw["port"])
    if not 0 < port < 65536:
        raise SettingsError(f"application port {port} out of range")
    return Application(
        name=str(raw.get("name") or f"app-{port}"),
        address=str(raw.get("address") or DEFAULT_APPLICATION_ADDRESS),
        port=port,
        path=str(raw.get("path") or "/metrics"),
    )


def _profile(raw: dict[str, Any]) -> str:
    name = raw["name"]
    if name not in PROFILES:
        raise SettingsError(f"unknown profile {name!r}")
    return name


def _selector(raw: dict[str, Any]) -> Selector:
    selector = Selector(type=str(raw["type"]), match=str(raw["match"]))
    if selector.type not in ("Prefix", "Regex", "Exact", "Contains"):
        raise SettingsError(f"unknown selector type {selector.type!r}")
    if selector.type == "Regex":
        try:
            _regex(selector.match)
        except re.error as exc:
            raise SettingsError(f"bad regex {selector.match!r}: {exc}") from None
    return selector
