"""MeshTrafficPermission's schema: which callers may reach the selected proxies' inbounds.

```yaml
type: MeshTrafficPermission
mesh: default
name: allow-web
spec:
  targetRef: {kind: MeshService, name: backend}    # the protected side (absent: the whole mesh)
  from:                                           # legacy form: an action per group of callers
  - targetRef: {kind: MeshService, name: web}
    default: {action: Allow}                      # Allow | Deny | AllowWithShadowDeny
# or, the rules form (instead of `from`):
  rules:
  - default:
      allow: [{spiffeID: {type: Exact, value: spiffe://default/web}}]
      deny: [{spiffeID: {type: Prefix, value: spiffe://default/legacy-}}]
      allowWithShadowDeny: [...]
```
Callers are told apart by the identity their certificate proves, `spiffe://<mesh>/<service>`: a
`from` entry can name a service (MeshService, or a MeshSubset / MeshServiceSubset whose only tag is
`kuma.io/service`) or the whole mesh. Other tags are refused: certificates here carry the service,
not other tags (Kuma adds `kuma://<tag>/<value>` SANs; we sign exactly what the token proves).
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from control_plane.policies.core.spec import Match, Sections, callers_by_service, policy_model
from control_plane.policies.core.targetref import (
    DATAPLANE,
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    TargetRef,
)
from control_plane.resources.common import SERVICE_TAG, StrictModel

KIND = "MeshTrafficPermission"
ALLOW = "Allow"
DENY = "Deny"
ALLOW_WITH_SHADOW_DENY = "AllowWithShadowDeny"

SECTIONS = Sections(
    top=(MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET),
    from_=(MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET),
    rules=True,
)


class Conf(StrictModel):
    action: Literal["Allow", "Deny", "AllowWithShadowDeny"]


class RuleConf(StrictModel):
    allow: list[Match] | None = None
    deny: list[Match] | None = None
    allowWithShadowDeny: list[Match] | None = None

    @model_validator(mode="after")
    def _something(self) -> RuleConf:
        if not (self.allow or self.deny or self.allowWithShadowDeny):
            raise ValueError("at least one of 'allow', 'allowWithShadowDeny', 'deny' has to be defined")
        return self


def caller_service(ref: TargetRef) -> str | None:
    """The service a `from` targetRef names (None: every caller of the mesh)."""
    subset = ref.subset()
    return subset.get(SERVICE_TAG)


MeshTrafficPermission = policy_model(KIND, Conf, SECTIONS, rule_conf=RuleConf, spec_check=callers_by_service)
