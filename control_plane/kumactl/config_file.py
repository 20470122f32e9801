"""kumactl's own configuration (`~/.kumactl/config`, Kuma's layout): control planes and contexts.

    contexts: [{name: local, controlPlane: local}]
    controlPlanes: [{name: local, coordinates: {apiServer: {url: http://localhost:5681}}}]
    currentContext: local

A control plane may also carry Kuma's `authType: tokens` with `authConf: {token: ...}` (sent as
`Authorization: Bearer`), `caCertFile` (to verify an https:// address) and `skipVerify`.
A missing file means the one control plane `local` at http://localhost:5681, as in Kuma.
The file is written 0600: it holds user tokens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from control_plane.kumactl.errors import KumactlError
from kuma_common import defaults, safe_yaml

CONFIG_ENV = "KUMACTL_CONFIG"
DEFAULT_CONFIG_PATH = "~/.kumactl/config"
DEFAULT_CP_NAME = "local"
DEFAULT_CP_URL = f"http://localhost:{defaults.API_HTTP_PORT}"
FILE_MODE = 0o600
DIR_MODE = 0o700


def config_path(flag: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """`--config-file` wins over $KUMACTL_CONFIG, which wins over ~/.kumactl/config."""
    return Path(flag or env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH).expanduser()


def check_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise KumactlError(f"--address {url!r} is not a URL of the form http(s)://host[:port]")
    return url.rstrip("/")


AUTH_TYPES = ("tokens",)
# Kuma's coordinates.apiServer keys besides the url, kept as given.
EXTRA_KEYS = ("authType", "authConf", "caCertFile", "skipVerify")


@dataclass
class KumactlConfig:
    control_planes: dict[str, str] = field(default_factory=dict)  # name -> API server URL
    contexts: dict[str, str] = field(default_factory=dict)  # context name -> control plane name
    current_context: str = ""
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> EXTRA_KEYS given

    def current_extras(self) -> dict[str, Any]:
        return self.extras.get(self.contexts.get(self.current_context, ""), {})

    @classmethod
    def default(cls) -> KumactlConfig:
        return cls({DEFAULT_CP_NAME: DEFAULT_CP_URL}, {DEFAULT_CP_NAME: DEFAULT_CP_NAME}, DEFAULT_CP_NAME)

    def current_url(self) -> str:
        cp_name = self.contexts.get(self.current_context, "")
        url = self.control_planes.get(cp_name)
        if url is None:
            raise KumactlError(
                f"the current context {self.current_context!r} names no known control plane; "
                "run kumactl config control-planes add --name N --address URL"
            )
        return url

    def add(self, name: str, url: str, overwrite: bool, extras: dict[str, Any] | None = None) -> None:
        if name in self.control_planes and not overwrite:
            raise KumactlError(
                f'Control Plane with name "{name}" already exists; use --overwrite to replace it'
            )
        self.control_planes[name] = check_url(url)
        self.extras[name] = {k: v for k, v in (extras or {}).items() if v}
        self.contexts[name] = name
        self.current_context = name

    def switch(self, name: str) -> None:
        if name not in self.contexts:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise KumactlError(f'there is no Control Plane with name "{name}" (known: {known})')
        self.current_context = name

    def remove(self, name: str) -> None:
        if name not in self.control_planes:
            raise KumactlError(f'there is no Control Plane with name "{name}"')
        del self.control_planes[name]
        self.extras.pop(name, None)
        self.contexts = {ctx: cp for ctx, cp in self.contexts.items() if cp != name}
        if self.current_context not in self.contexts:
            self.current_context = next(iter(self.contexts), "")

    def to_document(self) -> dict[str, Any]:
        return {
            "contexts": [{"name": ctx, "controlPlane": cp} for ctx, cp in self.contexts.items()],
            "controlPlanes": [
                {"name": name, "coordinates": {"apiServer": {"url": url, **self.extras.get(name, {})}}}
                for name, url in self.control_planes.items()
            ],
            "currentContext": self.current_context,
        }


def load(path: Path) -> KumactlConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return KumactlConfig.default()
    except OSError as exc:
        raise KumactlError(f"cannot read the kumactl config {path}: {exc.strerror}") from None
    try:
        doc = safe_yaml.safe_load(text) or {}
        return _from_document(doc)
    except (yaml.YAMLError, TypeError, KeyError, AttributeError) as exc:
        raise KumactlError(f"the kumactl config {path} is malformed ({exc}); fix or remove it") from None


def _from_document(doc: dict[str, Any]) -> KumactlConfig:
    servers = {cp["name"]: cp["coordinates"]["apiServer"] for cp in doc.get("controlPlanes") or []}
    planes = {name: server["url"] for name, server in servers.items()}
    extras = {name: {k: server[k] for k in EXTRA_KEYS if server.get(k)} for name, server in servers.items()}
    contexts = {ctx["name"]: ctx["controlPlane"] for ctx in doc.get("contexts") or []}
    return KumactlConfig(planes, contexts, doc.get("currentContext") or "", extras)


def save(path: Path, config: KumactlConfig) -> None:
    """Write atomically (temp file + rename), owner-only."""
    try:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump(config.to_document(), handle, sort_keys=False)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        raise KumactlError(f"cannot write the kumactl config {path}: {exc.strerror}") from None
