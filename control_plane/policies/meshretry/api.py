"""MeshRetry's schema (Kuma's names; every field optional unless noted, defaults applied by the
plugin once the confs are merged).

```yaml
type: MeshRetry
mesh: default
name: backend-retries
spec:
  targetRef: {kind: Mesh}                  # which proxies (absent: the whole mesh)
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      tcp:
        maxConnectAttempt: 5               # required in `tcp`; Envoy's default is 1
      http:                                # services of protocol http / http2
        numRetries: 3                      # default 1; 0: no retries at all
        perTryTimeout: 2s                  # default: none (the route's timeout); 0s: none
        backOff: {baseInterval: 25ms, maxInterval: 250ms}   # defaults 25ms, 10 x baseInterval
        rateLimitedBackOff:                # back off as the upstream's reset header says
          resetHeaders: [{name: retry-after, format: Seconds}]   # or UnixTimestamp
          maxInterval: 300s                # default 300s
        retryOn: [5xx, "503", HttpMethodGet]   # default: gateway-error, connect-failure, refused-stream
        retriableResponseHeaders: [{name: x-retry, type: Present}]
        retriableRequestHeaders: [{name: x-idempotent, value: "true"}]
        hostSelection:
        - predicate: OmitPreviousHosts     # or OmitHostsWithTags {tags: {...}},
                                           # or OmitPreviousPriorities {updateFrequency: 2}
        hostSelectionMaxAttempts: 3        # default: Envoy's (1)
      grpc:                                # services of protocol grpc
        numRetries: 3
        retryOn: [Unavailable, ResourceExhausted]  # default: cancelled, connect-failure, gateway-error,
                                                   # refused-stream, reset, resource-exhausted, unavailable
```
`http.retryOn` takes Kuma's conditions (below), the HTTP methods that may be retried
(`HttpMethod<Name>`) and HTTP status codes ("503" or 503). Status codes alone keep the default
conditions and add Envoy's `retriable-status-codes`; methods alone keep them too.
`retriableResponseHeaders` turn on Envoy's `retriable-headers` condition (so they do trigger a
retry); `retriableRequestHeaders` and the methods say which requests may be retried at all.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from control_plane.policies.core.fields import Duration, PositiveDuration, seconds
from control_plane.policies.core.http import HeaderMatch, HeaderName
from control_plane.policies.core.spec import TO_KINDS, Sections, policy_model
from control_plane.resources.common import StrictModel, validate_tags

KIND = "MeshRetry"
SECTIONS = Sections(to=TO_KINDS)

UInt32 = Annotated[int, Field(ge=0, le=2**32 - 1, strict=True)]
PositiveUInt32 = Annotated[int, Field(gt=0, le=2**32 - 1, strict=True)]

# Kuma's defaults (pkg/plugins/policies/meshretry): what an unset field means once a policy applies.
DEFAULT_NUM_RETRIES = 1
DEFAULT_BASE_INTERVAL = "25ms"
DEFAULT_UPDATE_FREQUENCY = 2  # OmitPreviousPriorities (Kuma's CRD default)
DEFAULT_HTTP_RETRY_ON = ("gateway-error", "connect-failure", "refused-stream")
DEFAULT_GRPC_RETRY_ON = (
    "cancelled",
    "connect-failure",
    "gateway-error",
    "refused-stream",
    "reset",
    "resource-exhausted",
    "unavailable",
)

# Kuma's HTTP retry conditions → Envoy's `retry_on` names.
HTTP_CONDITIONS = {
    "5xx": "5xx",
    "GatewayError": "gateway-error",
    "Reset": "reset",
    "Retriable4xx": "retriable-4xx",
    "ConnectFailure": "connect-failure",
    "EnvoyRatelimited": "envoy-ratelimited",
    "RefusedStream": "refused-stream",
    "Http3PostConnectFailure": "http3-post-connect-failure",
}
HTTP_METHOD_PREFIX = "HttpMethod"
HTTP_METHODS = ("Connect", "Delete", "Get", "Head", "Options", "Patch", "Post", "Put", "Trace")
# Kuma's gRPC retry conditions → Envoy's (Envoy spells the first one "cancelled").
GRPC_CONDITIONS = {
    "Canceled": "cancelled",
    "DeadlineExceeded": "deadline-exceeded",
    "Internal": "internal",
    "ResourceExhausted": "resource-exhausted",
    "Unavailable": "unavailable",
}
_KNOWN_STATUS = frozenset(status.value for status in HTTPStatus)
# Envoy's and other spellings people write, pointed at Kuma's name.
_SPELLINGS = {
    **{envoy: kuma for kuma, envoy in HTTP_CONDITIONS.items()},
    "5XX": "5xx",
    **{method.upper(): HTTP_METHOD_PREFIX + method for method in HTTP_METHODS},
}


_ALLOWED_HTTP_RETRY_ON = (
    f"{', '.join(HTTP_CONDITIONS)}, {HTTP_METHOD_PREFIX}<{'|'.join(HTTP_METHODS)}> "
    "or an HTTP status code like 503"
)


def _http_retry_on(value: str) -> str:
    if value in HTTP_CONDITIONS or (is_method(value) and value[len(HTTP_METHOD_PREFIX) :] in HTTP_METHODS):
        return value
    if is_status_code(value) and int(value) in _KNOWN_STATUS:
        return value
    hint = f" (did you mean {_SPELLINGS[value]!r}?)" if value in _SPELLINGS else ""
    raise ValueError(f"unknown item {value!r}{hint}; allowed: {_ALLOWED_HTTP_RETRY_ON}")


def _status_as_text(value: Any) -> Any:
    """A status code written as a YAML number (503) is the text "503"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


HttpRetryOn = Annotated[
    str, BeforeValidator(_status_as_text), Field(strict=True), AfterValidator(_http_retry_on)
]
GrpcRetryOn = Literal["Canceled", "DeadlineExceeded", "Internal", "ResourceExhausted", "Unavailable"]


def is_status_code(value: str) -> bool:
    return value.isdigit()


def is_method(value: str) -> bool:
    return value.startswith(HTTP_METHOD_PREFIX)


class BackOff(StrictModel):
    baseInterval: PositiveDuration | None = None
    maxInterval: PositiveDuration | None = None

    @model_validator(mode="after")
    def _something(self) -> BackOff:
        if self.baseInterval is None and self.maxInterval is None:
            raise ValueError("at least one of 'baseInterval', 'maxInterval' has to be defined")
        return self


class ResetHeader(StrictModel):
    name: HeaderName
    format: Literal["Seconds", "UnixTimestamp"]


class RateLimitedBackOff(StrictModel):
    resetHeaders: Annotated[list[ResetHeader], Field(min_length=1)]
    maxInterval: PositiveDuration | None = None


class Predicate(StrictModel):
    predicate: Literal["OmitPreviousHosts", "OmitHostsWithTags", "OmitPreviousPriorities"]
    tags: dict[str, str] | None = None  # OmitHostsWithTags: hosts carrying all these tags are skipped
    updateFrequency: PositiveUInt32 | None = None  # OmitPreviousPriorities; default 2

    @model_validator(mode="after")
    def _fields_fit_predicate(self) -> Predicate:
        if self.predicate == "OmitHostsWithTags":
            if not self.tags:
                raise ValueError("tags: OmitHostsWithTags needs the tags of the hosts to skip")
            validate_tags(self.tags, require_service=False)
        elif self.tags is not None:
            raise ValueError(f"tags: only used with OmitHostsWithTags, not {self.predicate}")
        if self.updateFrequency is not None and self.predicate != "OmitPreviousPriorities":
            raise ValueError(f"updateFrequency: only used with OmitPreviousPriorities, not {self.predicate}")
        return self


class _Retries(StrictModel):
    """What HTTP and gRPC retries share."""

    numRetries: UInt32 | None = None
    perTryTimeout: Duration | None = None
    backOff: BackOff | None = None
    rateLimitedBackOff: RateLimitedBackOff | None = None

    @model_validator(mode="after")
    def _something(self) -> _Retries:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError(
                f"at least one of {', '.join(map(repr, type(self).model_fields))} has to be defined"
            )
        return self


class Http(_Retries):
    retryOn: list[HttpRetryOn] | None = None
    retriableResponseHeaders: list[HeaderMatch] | None = None
    retriableRequestHeaders: list[HeaderMatch] | None = None
    hostSelection: list[Predicate] | None = None
    hostSelectionMaxAttempts: Annotated[int, Field(ge=0, strict=True)] | None = None

    @field_validator("hostSelection")
    @classmethod
    def _one_priority_predicate(cls, predicates: list[Predicate] | None) -> list[Predicate] | None:
        found = [i for i, p in enumerate(predicates or []) if p.predicate == "OmitPreviousPriorities"]
        if len(found) > 1:
            raise ValueError(f"OmitPreviousPriorities must be given at most once (items {found})")
        return predicates


class Grpc(_Retries):
    retryOn: list[GrpcRetryOn] | None = None


class Tcp(StrictModel):
    maxConnectAttempt: PositiveUInt32


class Conf(StrictModel):
    tcp: Tcp | None = None
    http: Http | None = None
    grpc: Grpc | None = None

    @model_validator(mode="after")
    def _something(self) -> Conf:
        if self.tcp is None and self.http is None and self.grpc is None:
            raise ValueError("at least one of 'tcp', 'http', 'grpc' has to be defined")
        return self


def base_interval(back_off: BackOff | None) -> str:
    return (back_off.baseInterval if back_off else None) or DEFAULT_BASE_INTERVAL


def _check_spec(spec: Any) -> None:
    """What one field cannot judge alone (and a merge of valid confs may still break, so the plugin
    copes too): a backOff whose maxInterval is below its baseInterval (25ms when unset)."""
    for index, entry in enumerate(spec.entries("to")):
        for section in ("http", "grpc"):
            back_off = getattr(getattr(entry.default, section), "backOff", None)
            if back_off is None or back_off.maxInterval is None:
                continue
            base = base_interval(back_off)
            if seconds(back_off.maxInterval) < seconds(base):
                raise ValueError(
                    f"to[{index}].default.{section}.backOff.maxInterval: {back_off.maxInterval!r} "
                    f"must not be less than baseInterval ({base!r})"
                )


MeshRetry = policy_model(KIND, Conf, SECTIONS, spec_check=_check_spec)


def _initial_retries() -> dict[str, Any]:
    return {
        "numRetries": 5,
        "perTryTimeout": "16s",
        "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"},
    }


# Kuma's `mesh-retry-all-<mesh>` (pkg/defaults/mesh/meshretry.go).
INITIAL_SPEC = {
    "targetRef": {"kind": "Mesh"},
    "to": [
        {
            "targetRef": {"kind": "Mesh"},
            "default": {
                "tcp": {"maxConnectAttempt": 5},
                "http": _initial_retries(),
                "grpc": _initial_retries(),
            },
        }
    ],
}
