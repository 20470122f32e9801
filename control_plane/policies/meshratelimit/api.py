"""MeshRateLimit's schema (Kuma's names; every field optional unless noted, what an unset field
means is said beside it).

```yaml
type: MeshRateLimit
mesh: default
name: backend-rate-limit
spec:
  targetRef: {kind: MeshService, name: backend}  # which proxies (absent: the whole mesh)
  rules:                                 # their inbounds (or the legacy `from: [{targetRef:
  - default:                             #   {kind: Mesh}, default: ...}]`, counted as rules)
      local:                             # required; at least one of http, tcp
        http:                            # requests into HTTP/gRPC inbounds; at least one field
          disabled: false                # true: no request limit (lifts one merged from elsewhere)
          requestRate: {num: 5, interval: 10s}   # both required: num > 0, interval > 50ms
          onRateLimit:
            status: 429                  # default 429; an error status Envoy knows (400-511)
            headers:                     # on the refused responses; at most 10 in all
              set: [{name: x-rate-limited, value: "true"}]   # replaces the header
              add: [{name: x-limited-by, value: mesh}]       # appends to it
        tcp:                             # connections into any inbound; at least one field
          disabled: false
          connectionRate: {num: 100, interval: 1s}
  to:                                    # the proxies' calls to services (not in Kuma, see below)
  - targetRef: {kind: MeshService, name: backend}
    default: {local: {http: {requestRate: {num: 100, interval: 1s}}}}
```
Kuma accepts `to` only on gateways (MeshGateway), which do not exist here; this control plane also
takes it for a sidecar's outbounds (kinds Mesh and MeshService, as its other `to` policies): the
limit then applies to what the local application sends to that service. Kuma's per-caller
`rules[].matches` are not taken (an unknown field): a limit is for all callers of an inbound.
"""

from __future__ import annotations

from typing import Annotated

from envoy.type.v3 import http_status_pb2
from pydantic import AfterValidator, Field, model_validator

from control_plane.policies.core.fields import Duration, seconds
from control_plane.policies.core.http import HeaderName
from control_plane.policies.core.spec import TO_KINDS, Sections, policy_model
from control_plane.policies.core.targetref import MESH
from control_plane.resources.common import StrictModel

KIND = "MeshRateLimit"
SECTIONS = Sections(to=TO_KINDS, from_=(MESH,), rules=True)

DEFAULT_STATUS = 429  # Kuma's (and Envoy's) status of a refused request
MIN_INTERVAL_S = 0.05  # Kuma refuses 50ms or less; Envoy's token buckets refill at most that often
MAX_HEADERS_PER_LIST = 16  # Kuma's
MAX_RESPONSE_HEADERS = 10  # Envoy's limit on the headers of a refused response (set and add)
# Envoy's HttpStatus takes only the codes its StatusCode enum names, and below 400 it answers 429
# whatever was asked: the statuses a refused request can really get.
ERROR_STATUSES = frozenset(v.number for v in http_status_pb2.StatusCode.DESCRIPTOR.values if v.number >= 400)

PositiveUInt32 = Annotated[int, Field(gt=0, le=2**32 - 1, strict=True)]


def _interval(text: str) -> str:
    if seconds(text) <= MIN_INTERVAL_S:
        raise ValueError(f"{text!r} must be greater than 50ms")
    return text


def _status(value: int) -> int:
    if value not in ERROR_STATUSES:
        known = ", ".join(map(str, sorted(ERROR_STATUSES)))
        raise ValueError(f"{value} is not an HTTP error status Envoy can answer with; one of {known}")
    return value


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\x00"):
        raise ValueError("must not contain line breaks or NUL")
    return value


Interval = Annotated[Duration, AfterValidator(_interval)]
Status = Annotated[int, Field(strict=True), AfterValidator(_status)]
HeaderValue = Annotated[str, Field(strict=True), AfterValidator(_header_value)]


def _at_least_one(model: StrictModel) -> None:
    if all(getattr(model, name) is None for name in type(model).model_fields):
        names = ", ".join(f"'{name}'" for name in type(model).model_fields)
        raise ValueError(f"at least one of {names} has to be defined")


class Rate(StrictModel):
    """`num` units (requests or connections) per `interval`: a token bucket of `num` tokens,
    refilled with `num` every `interval`."""

    num: PositiveUInt32
    interval: Interval


class HeaderKeyValue(StrictModel):
    name: HeaderName
    value: HeaderValue


HeaderList = Annotated[list[HeaderKeyValue], Field(max_length=MAX_HEADERS_PER_LIST)]


def _unique_names(headers: list[HeaderKeyValue] | None, field: str) -> None:
    names = [h.name for h in headers or []]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{field}: header {repeated[0]!r} is listed more than once")


class HeaderModifier(StrictModel):
    set: HeaderList | None = None
    add: HeaderList | None = None

    @model_validator(mode="after")
    def _fits_envoy(self) -> HeaderModifier:
        _unique_names(self.set, "set")
        _unique_names(self.add, "add")
        if any(h.name == "host" for h in [*(self.set or []), *(self.add or [])]):
            raise ValueError("'host' cannot be changed on a response")
        if len(self.set or []) + len(self.add or []) > MAX_RESPONSE_HEADERS:
            raise ValueError(
                f"at most {MAX_RESPONSE_HEADERS} headers in 'set' and 'add' together (Envoy's limit)"
            )
        return self


class OnRateLimit(StrictModel):
    status: Status | None = None
    headers: HeaderModifier | None = None


class LocalHTTP(StrictModel):
    disabled: Annotated[bool, Field(strict=True)] | None = None
    requestRate: Rate | None = None
    onRateLimit: OnRateLimit | None = None

    @model_validator(mode="after")
    def _something(self) -> LocalHTTP:
        _at_least_one(self)
        return self

    @property
    def enforced(self) -> bool:
        """Whether requests are limited (a merged conf may carry only `onRateLimit`)."""
        return not self.disabled and self.requestRate is not None


class LocalTCP(StrictModel):
    disabled: Annotated[bool, Field(strict=True)] | None = None
    connectionRate: Rate | None = None

    @model_validator(mode="after")
    def _something(self) -> LocalTCP:
        _at_least_one(self)
        return self

    @property
    def enforced(self) -> bool:
        return not self.disabled and self.connectionRate is not None


class Local(StrictModel):
    http: LocalHTTP | None = None
    tcp: LocalTCP | None = None

    @model_validator(mode="after")
    def _something(self) -> Local:
        _at_least_one(self)
        return self


class Conf(StrictModel):
    local: Local


MeshRateLimit = policy_model(KIND, Conf, SECTIONS)
