"""MeshMetric's schema: what a proxy's merged Prometheus endpoint serves (Kuma order 1500).

```yaml
type: MeshMetric
mesh: default
name: metrics-default
spec:
  targetRef: {kind: Mesh}                  # any top-level kind (absent: the whole mesh)
  default:
    sidecar:
      profiles:
        appendProfiles: [{name: Basic}]    # All | Basic | None; absent or empty: Basic (Kuma)
        exclude: [{type: Regex, match: "envoy_cluster_lb_.*"}]   # Prefix | Regex | Exact | Contains
        include: [{type: Prefix, match: "envoy_cluster_upstream_cx_"}]
      includeUnused: false                 # Envoy's stats never updated are left out (Kuma default)
    applications:                          # the workload's own Prometheus endpoints, merged in
    - {name: app, path: /metrics, port: 8081}             # address: the Dataplane's (default)
    backends:
    - type: Prometheus
      prometheus: {port: 5670, path: /metrics}            # Kuma's defaults
```
A family of Envoy's stats is served if a profile selects it, unless an `exclude` selector matches
it, unless an `include` selector matches it (Kuma's order: include wins). Selectors match the
family name (`envoy_cluster_upstream_rq_total`); `Regex` is a search (Go's MatchString), not a
full match. Profiles: `All` (everything), `Basic` (Kuma's list of the useful families, and without
series about the mesh's own plumbing: clusters `_*`, `ads_cluster`, ...), `None` (nothing but what
`include` adds). Applications' series are never filtered.

`backends[].prometheus.tls.mode`: `Disabled` (default) only; `ProvidedTLS` and
`ActiveMTLSBackend` are refused (no metrics certificate support here). `OpenTelemetry` backends
are refused: nothing here pushes metrics to a collector (docs/metrics.md).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from control_plane.policies.core.spec import Sections, policy_model
from control_plane.resources.common import StrictModel

KIND = "MeshMetric"
SECTIONS = Sections(single_item=True)

DEFAULT_PORT = 5670  # Kuma's Prometheus backend port
DEFAULT_PATH = "/metrics"
DEFAULT_APPLICATION_PATH = "/metrics"
DEFAULT_CLIENT_ID = "default-backend"  # Kuma's name of a backend without clientId

PROFILES = ("All", "Basic", "None")
SELECTOR_TYPES = ("Prefix", "Regex", "Exact", "Contains")


def _path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path (start with /)")
    if any(c in value for c in " ?#") or any(ord(c) < 0x20 for c in value):
        raise ValueError(f"{value!r} must be a plain path (no spaces, query or fragment)")
    return value


class Profile(StrictModel):
    name: Literal["All", "Basic", "None"]


class Selector(StrictModel):
    type: Literal["Prefix", "Regex", "Exact", "Contains"]
    match: str = Field(min_length=1)

    @model_validator(mode="after")
    def _regex_compiles(self) -> Selector:
        if self.type == "Regex":
            try:
                re.compile(self.match)
            except re.error as exc:
                raise ValueError(f"match: {self.match!r} is not a regular expression: {exc}") from None
        return self


class Profiles(StrictModel):
    appendProfiles: list[Profile] | None = None
    exclude: list[Selector] | None = None
    include: list[Selector] | None = None


class Sidecar(StrictModel):
    profiles: Profiles | None = None
    includeUnused: bool | None = None


class Application(StrictModel):
    name: str | None = Field(None, min_length=1)
    path: str = DEFAULT_APPLICATION_PATH
    address: str | None = Field(None, min_length=1)
    port: int = Field(ge=1, le=65535)

    _check_path = field_validator("path")(lambda cls, v: _path(v))


class PrometheusTls(StrictModel):
    mode: Literal["Disabled", "ProvidedTLS", "ActiveMTLSBackend"] = "Disabled"

    @field_validator("mode")
    @classmethod
    def _only_disabled(cls, mode: str) -> str:
        if mode != "Disabled":
            raise ValueError(
                f"{mode!r} is not supported by this control plane: the metrics endpoint is plain HTTP "
                "(use Disabled)"
            )
        return mode


class PrometheusBackend(StrictModel):
    clientId: str | None = Field(None, min_length=1)
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    path: str = DEFAULT_PATH
    tls: PrometheusTls | None = None

    _check_path = field_validator("path")(lambda cls, v: _path(v))


class OpenTelemetryBackend(StrictModel):
    endpoint: str | None = None
    backendRef: dict | None = None
    refreshInterval: str | None = None


class Backend(StrictModel):
    type: Literal["Prometheus", "OpenTelemetry"]
    prometheus: PrometheusBackend | None = None
    openTelemetry: OpenTelemetryBackend | None = None

    @model_validator(mode="after")
    def _fits_type(self) -> Backend:
        if self.type == "OpenTelemetry":
            raise ValueError(
                "type: OpenTelemetry backends are not supported by this control plane (nothing pushes "
                "metrics to a collector); use a Prometheus backend"
            )
        if self.openTelemetry is not None:
            raise ValueError("openTelemetry: only for type OpenTelemetry")
        return self

    def prometheus_backend(self) -> PrometheusBackend:
        return self.prometheus or PrometheusBackend()


class Conf(StrictModel):
    sidecar: Sidecar | None = None
    applications: list[Application] | None = None
    backends: list[Backend] | None = None

    @field_validator("backends")
    @classmethod
    def _distinct_ports(cls, backends: list[Backend] | None) -> list[Backend] | None:
        ports = [b.prometheus_backend().port for b in backends or []]
        for port in ports:
            if ports.count(port) > 1:
                raise ValueError(f"two Prometheus backends on port {port}: each needs its own port")
        return backends


MeshMetric = policy_model(KIND, Conf, SECTIONS)
