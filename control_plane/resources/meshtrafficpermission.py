"""MeshTrafficPermission in Kuma's targetRef form: which callers may reach which services.

```yaml
type: MeshTrafficPermission
mesh: default
name: deny-web-to-backend
spec:
  targetRef: {kind: MeshService, name: backend}   # the protected side; or {kind: Mesh}
  from:
  - targetRef: {kind: MeshService, name: web}      # the callers; or {kind: Mesh}
    default: {action: Deny}                          # Allow | Deny | AllowWithShadowDeny
```
Only the `Mesh` and `MeshService` kinds are supported (Kuma also has subsets); anything else is
refused with the field at fault rather than silently matching nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from control_plane.resources.common import MeshScopedResource, StrictModel

MESH_KIND = "Mesh"
MESH_SERVICE_KIND = "MeshService"
KINDS = (MESH_KIND, MESH_SERVICE_KIND)

ALLOW = "Allow"
DENY = "Deny"
ALLOW_WITH_SHADOW_DENY = "AllowWithShadowDeny"
ACTIONS = (ALLOW, DENY, ALLOW_WITH_SHADOW_DENY)

# How specific a targetRef is: a MeshService entry overrides a Mesh one (Kuma's ordering).
SPECIFICITY = {MESH_KIND: 0, MESH_SERVICE_KIND: 1}


class TargetRef(StrictModel):
    kind: str
    name: str | None = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"unknown kind {value!r}; supported kinds: {', '.join(KINDS)}")
        return value

    @model_validator(mode="after")
    def _name_matches_kind(self) -> TargetRef:
        if self.kind == MESH_SERVICE_KIND and not self.name:
            raise ValueError("name: is required with kind MeshService")
        if self.kind == MESH_KIND and self.name:
            raise ValueError("name: must not be set with kind Mesh")
        return self

    def selects(self, service: str) -> bool:
        return self.kind == MESH_KIND or self.name == service

    @property
    def specificity(self) -> int:
        return SPECIFICITY[self.kind]


class Conf(StrictModel):
    action: str

    @field_validator("action")
    @classmethod
    def _known_action(cls, value: str) -> str:
        if value not in ACTIONS:
            raise ValueError(f"unknown action {value!r}; supported actions: {', '.join(ACTIONS)}")
        return value


class From(StrictModel):
    targetRef: TargetRef
    default: Conf


class Spec(StrictModel):
    # Kuma defaults an absent top-level targetRef to the whole mesh.
    targetRef: TargetRef = Field(default_factory=lambda: TargetRef(kind=MESH_KIND))
    from_: list[From] = Field(alias="from")

    @field_validator("from_")
    @classmethod
    def _not_empty(cls, value: list[From]) -> list[From]:
        if not value:
            raise ValueError("needs at least one entry (a policy without callers selects nothing)")
        return value


class MeshTrafficPermission(MeshScopedResource):
    type: Literal["MeshTrafficPermission"] = "MeshTrafficPermission"
    spec: Spec
