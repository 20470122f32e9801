"""MeshFaultInjection's schema (Kuma's names): faults injected into HTTP requests, for testing how
callers cope.

```yaml
type: MeshFaultInjection
mesh: default
name: backend-chaos
spec:
  targetRef: {kind: MeshService, name: backend}   # which proxies (absent: the whole mesh)
  from:                                  # their inbounds, per caller (legacy form)
  - targetRef: {kind: MeshService, name: web}     # or Mesh: every caller
    default:
      http:                              # required; a list ([] removes faults merged from elsewhere)
      - abort: {httpStatus: 503, percentage: 50}  # answer 503 instead of forwarding, for 50 %
        delay: {value: 2s, percentage: "12.5"}    # wait before forwarding (value > 0)
        responseBandwidth: {limit: 100kbps, percentage: 100}  # slow the response body down
# or, instead of `from`, the rules form:
  rules:
  - matches: [{spiffeID: {type: Prefix, value: "spiffe://default/web"}}]  # absent: every caller
    default: {http: [{abort: {httpStatus: 500, percentage: 10}}]}
  to:                                    # the proxies' calls to services (not in Kuma, see below)
  - targetRef: {kind: MeshService, name: backend}
    default: {http: [{delay: {value: 500ms, percentage: 100}}]}
```
Each entry of `http` needs at least one of abort, delay, responseBandwidth, each with both fields;
percentages are 0-100 (an int, or a decimal as text, "12.5"). `abort.httpStatus` is 200-599 (Kuma
takes 100-599; Envoy refuses 1xx there, which would reject the proxy's whole config). A delay of
0s is refused likewise (Kuma takes it, Envoy does not). `limit` is a whole number of kbps, Mbps or
Gbps (Kuma's units: `kbps` is Envoy's `limit_kbps`, KiB per second).

Callers are told apart by the identity their mTLS certificate proves, `spiffe://<mesh>/<service>`:
a `from` entry names a service (MeshService, or a MeshSubset / MeshServiceSubset whose only tag is
`kuma.io/service`) or the whole mesh, as MeshTrafficPermission's. Kuma accepts `to` only on
gateways (MeshGateway), which do not exist here; this control plane also takes it for a sidecar's
outbounds (kinds Mesh and MeshService, as its other `to` policies): faults in what the local
application sends to that service.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from control_plane.policies.core.fields import Percentage, PositiveDuration
from control_plane.policies.core.spec import TO_KINDS, Sections, callers_by_service, policy_model
from control_plane.policies.core.targetref import MESH, MESH_SERVICE, MESH_SERVICE_SUBSET, MESH_SUBSET
from control_plane.resources.common import StrictModel

KIND = "MeshFaultInjection"
SECTIONS = Sections(
    to=TO_KINDS, from_=(MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET), rules=True, rule_matches=True
)

# Kuma's bandwidth units, as factors to Envoy's limit_kbps.
BANDWIDTH_UNITS = {"kbps": 1, "Mbps": 1000, "Gbps": 1_000_000}
_BANDWIDTH_RE = re.compile(r"^(\d+)\s?(kbps|Mbps|Gbps)$")
MAX_KBPS = 2**64 - 1


def bandwidth_kbps(text: str) -> int:
    """The (already validated) limit in Envoy's unit."""
    match = _BANDWIDTH_RE.match(text)
    assert match is not None, text
    return int(match[1]) * BANDWIDTH_UNITS[match[2]]


def _bandwidth(text: str) -> str:
    if not _BANDWIDTH_RE.match(text):
        raise ValueError(
            f"{text!r} is not a bandwidth: a whole number of kbps, Mbps or Gbps (e.g. 10kbps, 1Mbps)"
        )
    if not 0 < bandwidth_kbps(text) <= MAX_KBPS:
        raise ValueError(f"{text!r} must be greater than zero")
    return text


def _abort_status(value: int) -> int:
    if not 200 <= value <= 599:
        raise ValueError(f"{value} is not a status a request can be aborted with: 200-599")
    return value


Bandwidth = Annotated[str, Field(strict=True), AfterValidator(_bandwidth)]
AbortStatus = Annotated[int, Field(strict=True), AfterValidator(_abort_status)]


class Abort(StrictModel):
    httpStatus: AbortStatus
    percentage: Percentage


class Delay(StrictModel):
    value: PositiveDuration
    percentage: Percentage


class ResponseBandwidth(StrictModel):
    limit: Bandwidth
    percentage: Percentage


class Fault(StrictModel):
    abort: Abort | None = None
    delay: Delay | None = None
    responseBandwidth: ResponseBandwidth | None = None

    @model_validator(mode="after")
    def _something(self) -> Fault:
        if self.abort is None and self.delay is None and self.responseBandwidth is None:
            raise ValueError("at least one of 'abort', 'delay', 'responseBandwidth' has to be defined")
        return self


class Conf(StrictModel):
    http: list[Fault]


MeshFaultInjection = policy_model(KIND, Conf, SECTIONS, spec_check=callers_by_service)
