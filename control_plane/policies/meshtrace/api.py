"""MeshTrace's schema: distributed tracing of the selected proxies' HTTP traffic (Kuma order 700).

```yaml
type: MeshTrace
mesh: default
name: trace-all
spec:
  targetRef: {kind: Mesh}            # any top-level kind (absent: the whole mesh)
  default:
    backends:                        # required; zero or one backend ([]: no tracing)
    - type: Zipkin                   # Zipkin | OpenTelemetry | Datadog
      zipkin:
        url: http://jaeger:9411/api/v2/spans
        traceId128bit: false         # default false
        apiVersion: httpJson         # httpJson (default) | httpProto
        sharedSpanContext: true      # default true
    # - {type: OpenTelemetry, openTelemetry: {endpoint: otel-collector:4317}}  # OTLP over gRPC
    # - {type: Datadog, datadog: {url: http://datadog-agent:8126, splitService: false}}
    sampling:                        # percentages: 50, 12.5 or "12.5"; each defaults to 100
      overall: 100
      client: 100
      random: 100
    tags:                            # custom span tags
    - {name: team, literal: payments}
    - {name: user, header: {name: x-user, default: anonymous}}
```
Left out of Kuma's schema: `openTelemetry.backendRef` (a MeshOpenTelemetryBackend, a kind this
control plane does not have): refused, use `endpoint`.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, field_validator, model_validator

from control_plane.policies.core.fields import Percentage
from control_plane.policies.core.spec import Sections, field_value, policy_model
from control_plane.resources.common import StrictModel

KIND = "MeshTrace"
SECTIONS = Sections(single_item=True)

ZIPKIN, OPEN_TELEMETRY, DATADOG = "Zipkin", "OpenTelemetry", "Datadog"
DEFAULT_SAMPLING = 100  # Kuma's (and Envoy's) value of an unset sampling field
DEFAULT_ZIPKIN_PATH = "/api/v2/spans"
DEFAULT_OTEL_PORT = 4317  # OTLP over gRPC


def _url(text: str, schemes: tuple[str, ...]) -> SplitResult:
    try:
        url = urlsplit(text)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError(f"{text!r} is not a valid URL") from None
    if url.scheme not in schemes or not url.hostname:
        raise ValueError(f"{text!r} must be a URL like {schemes[0]}://host:port/path")
    return url


class ZipkinBackend(StrictModel):
    url: str
    traceId128bit: bool | None = None
    apiVersion: Literal["httpJson", "httpProto"] | None = None
    sharedSpanContext: bool | None = None

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        _url(value, ("http", "https"))
        return value


class DatadogBackend(StrictModel):
    url: str
    splitService: bool | None = None

    @field_validator("url")
    @classmethod
    def _agent_address(cls, value: str) -> str:
        url = _url(value, ("http",))
        if url.port is None or url.port == 0:
            raise ValueError(f"{value!r}: the port must be given (1-65535)")
        if url.path not in ("", "/") or url.query or url.fragment or url.username:
            raise ValueError(f"{value!r}: only a scheme, host and port are allowed (no path, query, user)")
        return value


class OpenTelemetryBackend(StrictModel):
    endpoint: str = Field(min_length=1)
    backendRef: None = Field(None, description="MeshOpenTelemetryBackend is not supported here: use endpoint")

    @field_validator("backendRef", mode="before")
    @classmethod
    def _no_backend_ref(cls, value: object) -> None:
        if value is not None:
            raise ValueError("MeshOpenTelemetryBackend resources are not supported here; use endpoint")
        return None

    @field_validator("endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        otel_address(value)
        return value


def otel_address(endpoint: str) -> tuple[str, int]:
    """The collector's host and port from Kuma's `host[:port]` (port 4317 when absent)."""
    if "://" in endpoint or "/" in endpoint:
        raise ValueError(f"{endpoint!r} must be host:port (e.g. otel-collector:4317), without a scheme")
    try:
        url = urlsplit(f"otel://{endpoint}")
        port = url.port
    except ValueError:
        raise ValueError(f"{endpoint!r} must be host:port with a port between 1 and 65535") from None
    if not url.hostname:
        raise ValueError(f"{endpoint!r} must be host:port (e.g. otel-collector:4317)")
    return url.hostname, port or DEFAULT_OTEL_PORT


_FIELD_OF = {ZIPKIN: "zipkin", OPEN_TELEMETRY: "openTelemetry", DATADOG: "datadog"}


class Backend(StrictModel):
    type: Literal["Zipkin", "OpenTelemetry", "Datadog"]
    zipkin: ZipkinBackend | None = None
    openTelemetry: OpenTelemetryBackend | None = None
    datadog: DatadogBackend | None = None

    @model_validator(mode="after")
    def _one_matching_type(self) -> Backend:
        wanted = _FIELD_OF[self.type]
        if getattr(self, wanted) is None:
            raise ValueError(f"{wanted}: must be defined with type {self.type}")
        for other in _FIELD_OF.values():
            if other != wanted and getattr(self, other) is not None:
                raise ValueError(f"{other}: must not be defined with type {self.type}")
        return self


class Sampling(StrictModel):
    overall: Percentage | None = None
    client: Percentage | None = None
    random: Percentage | None = None


class HeaderTag(StrictModel):
    name: str = Field(min_length=1)
    default: str | None = None


class Tag(StrictModel):
    name: str = Field(min_length=1)
    literal: str | None = None
    header: HeaderTag | None = None

    @model_validator(mode="after")
    def _literal_or_header(self) -> Tag:
        if (self.literal is None) == (self.header is None):
            raise ValueError("tag must have exactly one of 'literal' or 'header' defined")
        return self


class Conf(StrictModel):
    backends: list[Backend] | None = Field(None, max_length=1)
    sampling: Sampling | None = None
    tags: list[Tag] | None = None

    @property
    def backend(self) -> Backend | None:
        return self.backends[0] if self.backends else None


def _backends_defined(spec: object) -> None:
    """As Kuma: each policy says its backend (`[]`: none), so a policy never traces by accident."""
    default = field_value(spec, "default")
    if default is not None and default.backends is None:
        raise ValueError("default.backends: must be defined (a list of at most one backend; [] for none)")


MeshTrace = policy_model(KIND, Conf, SECTIONS, spec_check=_backends_defined)
