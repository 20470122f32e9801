"""MeshHealthCheck's schema (Kuma's names; every field optional, defaults applied by the plugin).

```yaml
type: MeshHealthCheck
mesh: default
name: backend-health
spec:
  targetRef: {kind: Mesh}               # which callers check (absent: every proxy)
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      interval: 10s                     # default 1m
      timeout: 2s                       # default 15s
      unhealthyThreshold: 3             # default 5
      healthyThreshold: 1               # default 1
      initialJitter: 1s                 # first check after a random 0..initialJitter
      intervalJitter: 1s                # added to every interval
      intervalJitterPercent: 10         # interval * 10 % added to every interval
      noTrafficInterval: 1m             # interval while the cluster never had traffic (Envoy: 60s)
      reuseConnection: true             # keep the checker's connection (Envoy: true)
      eventLogPath: /tmp/hc.log         # absolute path of Envoy's health-check event log
      alwaysLogHealthCheckFailures: false
      failTrafficOnPanic: false         # in panic mode, fail requests instead of using every host
      healthyPanicThreshold: 50         # percent (int or decimal string); Envoy's default 50
      http:                             # the checker for HTTP and HTTP/2 services
        path: /health                   # default "/"
        requestHeadersToAdd: {set: [{name: x-probe, value: mesh}], add: [...]}
        expectedStatuses: [200, 204]    # default: 200 only (Envoy)
      tcp:                              # for TCP services (and the fallback, see the plugin)
        send: cGluZw==                  # base64 of the bytes to send
        receive: [cG9uZw==]             # base64 of blocks expected back, in order
      grpc: {serviceName: backend, authority: backend.mesh}   # for gRPC services
```
At least one of http, tcp, grpc is needed; each can be switched off with `disabled: true`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from pydantic import AfterValidator, Field, StrictInt, field_validator, model_validator

from control_plane.policies.core.fields import Percentage, PositiveDuration
from control_plane.policies.core.http import HeaderName
from control_plane.policies.core.spec import TO_KINDS, Sections, policy_model
from control_plane.resources.common import StrictModel

KIND = "MeshHealthCheck"
SECTIONS = Sections(to=TO_KINDS)

# Kuma's defaults (meshhealthcheck/plugin/xds/configurer.go): what an unset field means.
DEFAULT_INTERVAL_S = 60.0
DEFAULT_TIMEOUT_S = 15.0
DEFAULT_UNHEALTHY_THRESHOLD = 5
DEFAULT_HEALTHY_THRESHOLD = 1
DEFAULT_HTTP_PATH = "/"

INT32_MAX = 2**31 - 1
MAX_HEADERS = 16


def _base64(value: str) -> str:
    if not value:
        raise ValueError("must not be empty (base64 of at least one byte)")
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{value!r} is not base64 (the bytes to send or expect, encoded)") from None
    return value


def _absolute_path(value: str) -> str:
    if not value.startswith("/") or "\x00" in value:
        raise ValueError(f"{value!r} must be an absolute file path (starting with '/')")
    return value


Base64 = Annotated[str, AfterValidator(_base64)]
PositiveInt32 = Annotated[int, Field(gt=0, le=INT32_MAX)]


def base64_bytes(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


class HeaderKeyValue(StrictModel):
    name: HeaderName
    value: Annotated[str, Field(max_length=4096)]


class HeaderModifier(StrictModel):
    """Headers for each check request: `set` replaces a header, `add` appends a value."""

    set: Annotated[list[HeaderKeyValue], Field(max_length=MAX_HEADERS)] | None = None
    add: Annotated[list[HeaderKeyValue], Field(max_length=MAX_HEADERS)] | None = None

    @field_validator("set", "add")
    @classmethod
    def _unique_names(cls, headers: list[HeaderKeyValue] | None) -> list[HeaderKeyValue] | None:
        names = [h.name for h in headers or []]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"header {', '.join(map(repr, repeated))} is listed twice; give each header once "
                "(several values: one value separated by commas)"
            )
        return headers


class HttpHealthCheck(StrictModel):
    disabled: bool | None = None
    path: str | None = None
    requestHeadersToAdd: HeaderModifier | None = None
    expectedStatuses: list[StrictInt] | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r} must be an HTTP path starting with '/' (e.g. /health)")
        return value

    @field_validator("expectedStatuses")
    @classmethod
    def _statuses(cls, value: list[int] | None) -> list[int] | None:
        bad = [status for status in value or [] if not 100 <= status <= 599]
        if bad:
            raise ValueError(f"{bad} are not HTTP status codes: each must be between 100 and 599")
        return value


class TcpHealthCheck(StrictModel):
    disabled: bool | None = None
    send: Base64 | None = None
    receive: list[Base64] | None = None


class GrpcHealthCheck(StrictModel):
    disabled: bool | None = None
    serviceName: str | None = None
    authority: str | None = None


class Conf(StrictModel):
    interval: PositiveDuration | None = None
    timeout: PositiveDuration | None = None
    unhealthyThreshold: PositiveInt32 | None = None
    healthyThreshold: PositiveInt32 | None = None
    initialJitter: PositiveDuration | None = None
    intervalJitter: PositiveDuration | None = None
    intervalJitterPercent: Annotated[StrictInt, Field(ge=0, le=100)] | None = None
    healthyPanicThreshold: Percentage | None = None
    failTrafficOnPanic: bool | None = None
    eventLogPath: Annotated[str, AfterValidator(_absolute_path)] | None = None
    alwaysLogHealthCheckFailures: bool | None = None
    noTrafficInterval: PositiveDuration | None = None
    reuseConnection: bool | None = None
    http: HttpHealthCheck | None = None
    tcp: TcpHealthCheck | None = None
    grpc: GrpcHealthCheck | None = None

    @model_validator(mode="after")
    def _a_checker(self) -> Conf:
        if self.http is None and self.tcp is None and self.grpc is None:
            raise ValueError("at least one of 'http', 'tcp', 'grpc' has to be defined")
        return self


MeshHealthCheck = policy_model(KIND, Conf, SECTIONS)
