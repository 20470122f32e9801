"""MeshTimeout's schema (Kuma's names; every field optional, defaults applied by the plugin).

```yaml
type: MeshTimeout
mesh: default
name: backend-timeouts
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      connectionTimeout: 2s        # default 5s
      idleTimeout: 1h              # default 1h
      http:
        requestTimeout: 3s         # default 15s; 0s disables
        streamIdleTimeout: 30m     # default 30m
        maxStreamDuration: 0s      # default 0s (none)
        maxConnectionDuration: 0s  # default 0s (none)
        requestHeadersTimeout: 0s  # default 0s (none)
  from:                            # or `rules: [{default: {...}}]`: the inbound side
  - targetRef: {kind: Mesh}
    default: {http: {requestTimeout: 10s}}
```
"""

from __future__ import annotations

from pydantic import model_validator

from control_plane.policies.core.fields import Duration, PositiveDuration
from control_plane.policies.core.spec import TO_KINDS, Sections, policy_model
from control_plane.policies.core.targetref import MESH
from control_plane.resources.common import StrictModel

KIND = "MeshTimeout"
SECTIONS = Sections(to=TO_KINDS, from_=(MESH,), rules=True)

# Kuma's defaults (pkg/plugins/policies/core/defaults), in seconds: what an unset field means.
DEFAULT_CONNECTION_TIMEOUT_S = 5.0
DEFAULT_IDLE_TIMEOUT_S = 3600.0
DEFAULT_REQUEST_TIMEOUT_S = 15.0
DEFAULT_STREAM_IDLE_TIMEOUT_S = 1800.0
DEFAULT_MAX_STREAM_DURATION_S = 0.0
DEFAULT_MAX_CONNECTION_DURATION_S = 0.0
DEFAULT_REQUEST_HEADERS_TIMEOUT_S = 0.0


class Http(StrictModel):
    requestTimeout: Duration | None = None
    streamIdleTimeout: Duration | None = None
    maxStreamDuration: Duration | None = None
    maxConnectionDuration: Duration | None = None
    requestHeadersTimeout: Duration | None = None

    @model_validator(mode="after")
    def _something(self) -> Http:
        if all(getattr(self, f) is None for f in type(self).model_fields):
            raise ValueError("at least one timeout in this section should be configured")
        return self


class Conf(StrictModel):
    connectionTimeout: PositiveDuration | None = None
    idleTimeout: Duration | None = None
    http: Http | None = None

    @model_validator(mode="after")
    def _something(self) -> Conf:
        if self.connectionTimeout is None and self.idleTimeout is None and self.http is None:
            raise ValueError("at least one timeout should be configured")
        return self


MeshTimeout = policy_model(KIND, Conf, SECTIONS)

# Kuma's `mesh-timeout-all-<mesh>` (pkg/defaults/mesh/meshtimeout.go): outbound defaults, and an
# inbound side with twice the outbound's connect/idle times and no request deadline.
INITIAL_SPEC = {
    "targetRef": {"kind": "Mesh", "proxyTypes": ["Sidecar"]},
    "from": [
        {
            "targetRef": {"kind": "Mesh"},
            "default": {
                "connectionTimeout": "10s",
                "idleTimeout": "2h0m0s",
                "http": {"requestTimeout": "0s", "streamIdleTimeout": "1h0m0s", "maxStreamDuration": "0s"},
            },
        }
    ],
    "to": [
        {
            "targetRef": {"kind": "Mesh"},
            "default": {
                "connectionTimeout": "5s",
                "idleTimeout": "1h0m0s",
                "http": {"requestTimeout": "15s", "streamIdleTimeout": "30m0s"},
            },
        }
    ],
}
