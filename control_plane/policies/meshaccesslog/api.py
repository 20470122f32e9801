"""MeshAccessLog's schema (Kuma's names; every field optional unless noted).

```yaml
type: MeshAccessLog
mesh: default
name: access-logs
spec:
  targetRef: {kind: Mesh}                 # which proxies (absent: the whole mesh)
  to:                                     # their calls to services (Mesh or MeshService)
  - targetRef: {kind: Mesh}
    default:
      backends:                           # required; [] switches logging off (merged: replaced)
      - type: File                        # File | Tcp | OpenTelemetry (not supported yet: refused)
        file:
          path: /var/log/mesh/access.log  # required, absolute
          format:                         # absent: Kuma's default for the protocol (HTTP or TCP)
            type: Plain                   # Plain | Json (required)
            plain: '[%START_TIME%] %KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE% %RESPONSE_CODE%'
            omitEmptyValues: false        # default false: empty operators print "-" (Plain) or "" (Json)
      - type: Tcp
        tcp:
          address: 127.0.0.1:5000         # required, host:port; kuma-dp sends the lines there
          format:
            type: Json
            json:                         # required with Json; keys unique, values non-empty
            - {key: start, value: '%START_TIME%'}
            - {key: status, value: '%RESPONSE_CODE%'}
  rules:                                  # or `from: [{targetRef: {kind: Mesh}, default: ...}]`:
  - default: {backends: [...]}            #   traffic into their inbounds (for all callers)
```
Kuma's per-caller `rules[].matches` are not taken (an unknown field): an inbound's log is for all
its callers. Formats and placeholders: `formats.py`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from control_plane.policies.core.spec import TO_KINDS, Sections, policy_model
from control_plane.policies.core.targetref import MESH
from control_plane.policies.meshaccesslog.formats import check_format
from control_plane.resources.common import StrictModel

KIND = "MeshAccessLog"
SECTIONS = Sections(to=TO_KINDS, from_=(MESH,), rules=True)

FILE, TCP, OPEN_TELEMETRY = "File", "Tcp", "OpenTelemetry"
PLAIN, JSON = "Plain", "Json"
_OTEL_ATTRIBUTE_KEY = re.compile(r"^[a-z]([a-z0-9]|[._][a-z0-9])*$")  # Kuma's pattern
_HOSTNAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def _no_control_characters(value: str) -> str:
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ValueError("must not contain line breaks or other control characters")
    return value


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute file path (e.g. /var/log/access.log)")
    if value.endswith("/"):
        raise ValueError(f"{value!r} names a directory, not a file")
    return value


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:5000, logs.internal:5000, [::1]:5000)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid = _is_ip(host, 6)
    else:
        valid = _is_ip(host, 4) or bool(_HOSTNAME.match(host))
    if not valid:
        raise ValueError(f"{value!r}: {host!r} is neither an IP address nor a host name")
    return value


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


Text = Annotated[str, Field(strict=True), AfterValidator(_no_control_characters)]
FormatText = Annotated[Text, AfterValidator(_non_empty), AfterValidator(check_format)]


class JsonValue(StrictModel):
    key: Annotated[Text, AfterValidator(_non_empty)]
    value: FormatText


class Format(StrictModel):
    type: Literal["Plain", "Json"]
    plain: FormatText | None = None
    json_: list[JsonValue] | None = Field(None, alias="json")
    omitEmptyValues: Annotated[bool, Field(strict=True)] | None = None

    @model_validator(mode="after")
    def _fits_type(self) -> Format:
        if self.type == PLAIN:
            if self.plain is None:
                raise ValueError("plain: must be defined with type Plain")
            if self.json_ is not None:
                raise ValueError("json: must not be set with type Plain")
        else:
            if self.json_ is None:
                raise ValueError("json: must be defined with type Json")
            if not self.json_:
                raise ValueError("json: must not be empty")
            if self.plain is not None:
                raise ValueError("plain: must not be set with type Json")
            keys = [v.key for v in self.json_]
            for index, key in enumerate(keys):
                if key in keys[:index]:
                    raise ValueError(f"json[{index}].key: {key!r} is listed more than once")
        return self


class FileBackend(StrictModel):
    path: Annotated[Text, AfterValidator(_absolute_path)]
    format: Format | None = None


class TcpBackend(StrictModel):
    address: Annotated[Text, AfterValidator(_host_port)]
    format: Format | None = None


class OtelAttribute(StrictModel):
    key: Annotated[str, Field(strict=True, pattern=_OTEL_ATTRIBUTE_KEY.pattern)]
    value: Text


class BackendRef(StrictModel):
    kind: Literal["MeshOpenTelemetryBackend"]
    name: str | None = None
    labels: dict[str, str] | None = None


class OtelBackend(StrictModel):
    """Kuma's schema, checked, then refused as a whole (see Backend): not supported yet."""

    endpoint: str | None = None
    backendRef: BackendRef | None = None
    attributes: list[OtelAttribute] | None = None
    body: Any = None

    @model_validator(mode="after")
    def _one_target(self) -> OtelBackend:
        if bool(self.endpoint) == (self.backendRef is not None):
            raise ValueError("exactly one of 'endpoint' and 'backendRef' has to be defined")
        return self


class Backend(StrictModel):
    type: Literal["Tcp", "File", "OpenTelemetry"]
    tcp: TcpBackend | None = None
    file: FileBackend | None = None
    openTelemetry: OtelBackend | None = None

    @model_validator(mode="after")
    def _fits_type(self) -> Backend:
        chosen = {TCP: "tcp", FILE: "file", OPEN_TELEMETRY: "openTelemetry"}[self.type]
        if getattr(self, chosen) is None:
            raise ValueError(f"{chosen}: must be defined with type {self.type}")
        for other in ("tcp", "file", "openTelemetry"):
            if other != chosen and getattr(self, other) is not None:
                raise ValueError(f"{other}: must not be set with type {self.type}")
        if self.type == OPEN_TELEMETRY:
            raise ValueError(
                "type: OpenTelemetry access logs are not supported yet by this control plane; "
                "use a File or Tcp backend"
            )
        return self

    @property
    def format(self) -> Format | None:
        target = self.file or self.tcp
        return target.format if target is not None else None


class Conf(StrictModel):
    backends: list[Backend]


MeshAccessLog = policy_model(KIND, Conf, SECTIONS)
