"""Kuma's `targetRef`: what a policy (or one of its `to` / `from` entries) points at.

One model for every level; which kinds a level accepts is the policy's choice (see `spec.py`), the
rules of each kind (which fields it needs and which it forbids) are Kuma's. Matching a proxy:
- top level: `Mesh` selects every proxy, `Dataplane` one by `name` or several by `labels` (and, with
  `sectionName`, one inbound by its name or port), `MeshSubset` the proxies with an inbound carrying
  all its `tags`, `MeshService` / `MeshServiceSubset` the proxies with an inbound of that service
  (and those tags);
- `to`: `Mesh` is every destination, `MeshService` one service;
- `from`: the callers, by their service.
A missing top-level targetRef is `{kind: Mesh}`, as in Kuma.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import model_validator

from control_plane.resources.common import SERVICE_TAG, StrictModel, validate_tags
from control_plane.resources.dataplane import Dataplane, Inbound

MESH = "Mesh"
DATAPLANE = "Dataplane"
MESH_SUBSET = "MeshSubset"
MESH_GATEWAY = "MeshGateway"
MESH_SERVICE = "MeshService"
MESH_EXTERNAL_SERVICE = "MeshExternalService"
MESH_MULTI_ZONE_SERVICE = "MeshMultiZoneService"
MESH_SERVICE_SUBSET = "MeshServiceSubset"
MESH_HTTP_ROUTE = "MeshHTTPRoute"

# Kuma's specificity order (api/common/v1alpha1/targetref.go): a higher number wins a merge.
ORDER = {
    MESH: 1,
    DATAPLANE: 2,
    MESH_SUBSET: 3,
    MESH_GATEWAY: 4,
    MESH_SERVICE: 5,
    MESH_EXTERNAL_SERVICE: 6,
    MESH_MULTI_ZONE_SERVICE: 7,
    MESH_SERVICE_SUBSET: 8,
    MESH_HTTP_ROUTE: 9,
}
SIDECAR = "Sidecar"
GATEWAY = "Gateway"

# Which fields each kind may carry (besides `kind`); the others are refused, naming the field.
# Universal mode has no namespaces and no MeshService resources, so `namespace`, and `labels` or
# `sectionName` on a MeshService (which select those resources and their ports), select nothing
# here: refused rather than silently matching nothing.
_ALLOWED_FIELDS: dict[str, frozenset[str]] = {
    MESH: frozenset({"proxyTypes"}),
    DATAPLANE: frozenset({"name", "labels", "sectionName"}),
    MESH_SUBSET: frozenset({"tags", "proxyTypes"}),
    MESH_SERVICE: frozenset({"name"}),
    MESH_SERVICE_SUBSET: frozenset({"name", "tags"}),
}
_OPTIONAL_FIELDS = ("name", "namespace", "labels", "tags", "sectionName", "proxyTypes", "mesh")


class TargetRef(StrictModel):
    kind: str
    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    tags: dict[str, str] | None = None
    sectionName: str | None = None
    proxyTypes: list[Literal["Sidecar", "Gateway"]] | None = None
    mesh: str | None = None

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> TargetRef:
        allowed = _ALLOWED_FIELDS.get(self.kind)
        if allowed is None:  # the level's kind check reports it (see spec.py)
            return self
        for field in _OPTIONAL_FIELDS:
            if getattr(self, field) is not None and field not in allowed:
                raise ValueError(f"{field}: must not be set with kind {self.kind}")
        if self.kind in (MESH_SERVICE, MESH_SERVICE_SUBSET) and not self.name:
            raise ValueError(f"name: is required with kind {self.kind}")
        if self.labels is not None and self.name:
            raise ValueError("labels: either labels or name must be set, not both")
        if self.kind == DATAPLANE and not self.name and self.labels is None:
            raise ValueError("name: kind Dataplane needs a name or labels")
        if self.tags is not None:
            validate_tags(self.tags, require_service=False)
        return self

    @property
    def order(self) -> int:
        return ORDER[self.kind]

    def subset(self) -> dict[str, str]:
        """The tags this reference stands for (Kuma's subset): empty for the whole mesh."""
        if self.kind == MESH:
            return {}
        tags = dict(self.tags or {})
        if self.kind in (MESH_SERVICE, MESH_SERVICE_SUBSET) and self.name:
            tags[SERVICE_TAG] = self.name
        return tags

    # --- top level: which proxies and inbounds -----------------------------------------------
    def selects_proxy(self, dataplane: Dataplane) -> bool:
        if self.proxyTypes is not None and SIDECAR not in self.proxyTypes:
            return False  # every proxy here is a sidecar
        if self.kind == MESH:
            return True
        if self.kind == DATAPLANE:
            return self._selects_dataplane(dataplane) and any(
                self._selects_section(dataplane, i) for i in dataplane.networking.inbound
            )
        return any(self._tags_match(i.tags) for i in dataplane.networking.inbound)

    def selects_inbound(self, dataplane: Dataplane, inbound: Inbound) -> bool:
        """Whether the policy shapes traffic into `inbound` (its `from` / `rules` apply there)."""
        if not self.selects_proxy(dataplane):
            return False
        if self.kind == MESH:
            return True
        if self.kind == DATAPLANE:
            return self._selects_section(dataplane, inbound)
        return self._tags_match(inbound.tags)

    def _selects_dataplane(self, dataplane: Dataplane) -> bool:
        if self.name is not None:
            return dataplane.name == self.name
        return _contains(dataplane.labels or {}, self.labels or {})

    def _selects_section(self, dataplane: Dataplane, inbound: Inbound) -> bool:
        if self.sectionName is None:
            return True
        return self.sectionName in (inbound.name, str(inbound.port))

    def _tags_match(self, tags: Mapping[str, str]) -> bool:
        return _contains(tags, self.subset())


def _contains(tags: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(tags.get(key) == value for key, value in wanted.items())


def mesh_target() -> TargetRef:
    return TargetRef(kind=MESH)
