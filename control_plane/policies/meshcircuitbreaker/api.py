"""MeshCircuitBreaker's schema (Kuma's names; every field optional, what an unset field means is
said beside it: Kuma leaves those to Envoy, whose defaults are the ones documented here).

```yaml
type: MeshCircuitBreaker
mesh: default
name: backend-breaker
spec:
  targetRef: {kind: Mesh}                  # which proxies (absent: the whole mesh)
  to:                                      # calls to services (their clusters)
  - targetRef: {kind: MeshService, name: backend}
    default:
      connectionLimits:                    # all > 0; Envoy's defaults:
        maxConnections: 1024               # 1024
        maxConnectionPools: 100            # unlimited
        maxPendingRequests: 1024           # 1024
        maxRequests: 1024                  # 1024
        maxRetries: 3                      # 3
      outlierDetection:
        disabled: false                    # true: no outlier detection (nothing else needed)
        interval: 10s                      # 10s, between ejection sweeps
        baseEjectionTime: 30s              # 30s, times the number of ejections
        maxEjectionPercent: 10             # 10 (%; at least one host can always be ejected)
        splitExternalAndLocalErrors: false # false
        healthyPanicThreshold: 50          # 50 (%, int or decimal text like "12.5"; 0: no panic mode)
        detectors:                         # required unless disabled; only those given are on
          totalFailures: {consecutive: 5}        # consecutive 5xx (or connect failures)
          gatewayFailures: {consecutive: 5}      # consecutive 502/503/504
          localOriginFailures: {consecutive: 5}  # with splitExternalAndLocalErrors only
          successRate: {minimumHosts: 5, requestVolume: 100, standardDeviationFactor: "1.9"}
          failurePercentage: {minimumHosts: 5, requestVolume: 50, threshold: 85}
  rules:                                   # or `from: [{targetRef: {kind: Mesh}, default: ...}]`:
  - default: {connectionLimits: {maxConnections: 256}}   # the local application's cluster
```
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from control_plane.policies.core.fields import Number, Percentage, PositiveDuration, decimal_of
from control_plane.policies.core.spec import TO_KINDS, Sections, policy_model
from control_plane.policies.core.targetref import MESH
from control_plane.resources.common import StrictModel

KIND = "MeshCircuitBreaker"
SECTIONS = Sections(to=TO_KINDS, from_=(MESH,), rules=True)

PositiveUInt32 = Annotated[int, Field(gt=0, le=2**32 - 1, strict=True)]
Percent = Annotated[int, Field(ge=0, le=100, strict=True)]


def _deviation_factor(value: int | float | str) -> int | float | str:
    number = decimal_of(value)
    if number <= 0:
        raise ValueError(f"{value!r} must be greater than zero")
    if number * 1000 >= 2**32:  # Envoy counts it in thousandths, in 32 bits
        raise ValueError(f"{value!r} must be less than {2**32 // 1000}")
    return value


DeviationFactor = Annotated[Number, AfterValidator(_deviation_factor)]


def _not_empty(model: StrictModel) -> None:
    if all(getattr(model, name) is None for name in type(model).model_fields):
        names = ", ".join(f"'{name}'" for name in type(model).model_fields)
        raise ValueError(f"at least one of {names} has to be defined")


class ConnectionLimits(StrictModel):
    maxConnections: PositiveUInt32 | None = None
    maxConnectionPools: PositiveUInt32 | None = None
    maxPendingRequests: PositiveUInt32 | None = None
    maxRetries: PositiveUInt32 | None = None
    maxRequests: PositiveUInt32 | None = None

    @model_validator(mode="after")
    def _something(self) -> ConnectionLimits:
        _not_empty(self)
        return self


class Consecutive(StrictModel):
    """A consecutive-failures detector: `consecutive` failures in a row eject the host."""

    consecutive: PositiveUInt32


class SuccessRate(StrictModel):
    minimumHosts: PositiveUInt32 | None = None  # Envoy's default 5
    requestVolume: PositiveUInt32 | None = None  # Envoy's default 100
    standardDeviationFactor: DeviationFactor | None = None  # Envoy's default 1.9


class FailurePercentage(StrictModel):
    minimumHosts: PositiveUInt32 | None = None  # Envoy's default 5
    requestVolume: PositiveUInt32 | None = None  # Envoy's default 50
    threshold: Percent | None = None  # Envoy's default 85


class Detectors(StrictModel):
    totalFailures: Consecutive | None = None
    gatewayFailures: Consecutive | None = None
    localOriginFailures: Consecutive | None = None
    successRate: SuccessRate | None = None
    failurePercentage: FailurePercentage | None = None

    @model_validator(mode="after")
    def _something(self) -> Detectors:
        _not_empty(self)
        return self


class OutlierDetection(StrictModel):
    disabled: Annotated[bool, Field(strict=True)] | None = None
    interval: PositiveDuration | None = None
    baseEjectionTime: PositiveDuration | None = None
    maxEjectionPercent: Percent | None = None
    splitExternalAndLocalErrors: Annotated[bool, Field(strict=True)] | None = None
    detectors: Detectors | None = None
    healthyPanicThreshold: Percentage | None = None

    @model_validator(mode="after")
    def _detectors_unless_disabled(self) -> OutlierDetection:
        if self.detectors is None and not self.disabled:
            raise ValueError(
                "detectors: is required (which failures eject a host), unless 'disabled' is true"
            )
        return self


class Conf(StrictModel):
    connectionLimits: ConnectionLimits | None = None
    outlierDetection: OutlierDetection | None = None

    @model_validator(mode="after")
    def _something(self) -> Conf:
        if self.connectionLimits is None and self.outlierDetection is None:
            raise ValueError("at least one of 'connectionLimits', 'outlierDetection' has to be defined")
        return self


MeshCircuitBreaker = policy_model(KIND, Conf, SECTIONS)

# Kuma's `mesh-circuit-breaker-all-<mesh>` (pkg/defaults/mesh/meshcircuitbreaker.go, v2.14.3):
# Envoy's own limits, written out; no outlier detection.
INITIAL_SPEC: dict[str, Any] = {
    "targetRef": {"kind": "Mesh"},
    "to": [
        {
            "targetRef": {"kind": "Mesh"},
            "default": {
                "connectionLimits": {
                    "maxConnections": 1024,
                    "maxPendingRequests": 1024,
                    "maxRequests": 1024,
                    "maxRetries": 3,
                }
            },
        }
    ],
}
