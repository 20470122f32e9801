"""MeshTCPRoute's schema (Kuma's names): where a service's TCP connections go.

```yaml
type: MeshTCPRoute
mesh: default
name: redis-to-replica
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: redis}
    rules:                                   # exactly one rule
    - default:
        backendRefs:
        - {kind: MeshService, name: redis-replica, weight: 90}
        - {kind: MeshServiceSubset, name: redis, tags: {version: v7}, weight: 10}
```
The backends share the same kinds, subsets and weights as MeshHTTPRoute's. On an HTTP service,
requests follow the TCP route's backends unless a MeshHTTPRoute routes them (it wins, as in Kuma).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from control_plane.policies.core.spec import Sections, policy_model
from control_plane.policies.core.targetref import (
    DATAPLANE,
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
)
from control_plane.policies.meshhttproute.api import BackendRef
from control_plane.resources.common import StrictModel

KIND = "MeshTCPRoute"
SECTIONS = Sections(top=(MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET), to=(MESH_SERVICE,))


class RuleConf(StrictModel):
    backendRefs: Annotated[list[BackendRef], Field(min_length=1)]

    @model_validator(mode="after")
    def _some_weight(self) -> RuleConf:
        if not any((b.weight if b.weight is not None else 1) > 0 for b in self.backendRefs):
            raise ValueError("backendRefs: at least one weight must be greater than zero")
        return self


class Rule(StrictModel):
    default: RuleConf


class To(StrictModel):
    rules: Annotated[list[Rule], Field(min_length=1, max_length=1)]


class Merged(StrictModel):
    rules: list[Rule] = Field(default_factory=list)


MeshTCPRoute = policy_model(KIND, RuleConf, SECTIONS, to_entry=To)
