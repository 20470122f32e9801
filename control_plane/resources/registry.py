"""Which resource types exist, their API paths and how to validate a raw document into one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from control_plane.policies.core.plugin import PolicyType
from control_plane.policies.registry import POLICY_TYPES
from control_plane.resources.common import format_validation_error
from control_plane.resources.dataplane import Dataplane
from control_plane.resources.dns_vips import DnsVips
from control_plane.resources.mesh import Mesh
from control_plane.resources.secrets import GlobalSecret, Secret


@dataclass(frozen=True)
class ResourceType:
    name: str  # the `type` field, e.g. "Dataplane"
    plural: str  # the path segment, e.g. "dataplanes"
    model: type[BaseModel]
    mesh_scoped: bool
    policy: PolicyType | None = None  # set for policies (from the policy registry)
    admin_only: bool = False  # read as well as written by admins only (secrets, as in Kuma)


MESH = ResourceType("Mesh", "meshes", Mesh, mesh_scoped=False)
DATAPLANE = ResourceType("Dataplane", "dataplanes", Dataplane, mesh_scoped=True)
POLICIES = tuple(ResourceType(t.kind, t.plural, t.model, mesh_scoped=True, policy=t) for t in POLICY_TYPES)
# What the control plane keeps for itself and a moved mesh needs (`kumactl export`): the mesh CA,
# token signing keys and revocations, user-token keys, the services' virtual IPs.
SECRET = ResourceType("Secret", "secrets", Secret, mesh_scoped=True, admin_only=True)
GLOBAL_SECRET = ResourceType(
    "GlobalSecret", "global-secrets", GlobalSecret, mesh_scoped=False, admin_only=True
)
DNS_VIPS = ResourceType("DnsVips", "dns-vips", DnsVips, mesh_scoped=True, admin_only=True)

TYPES: dict[str, ResourceType] = {
    t.name: t for t in (MESH, DATAPLANE, *POLICIES, SECRET, GLOBAL_SECRET, DNS_VIPS)
}
BY_PLURAL: dict[str, ResourceType] = {t.plural: t for t in TYPES.values()}


class InvalidResource(ValueError):
    """A document that is not a valid resource; `causes` names every offending field."""

    def __init__(self, causes: list[dict[str, str]], title: str = "Resource is not valid") -> None:
        super().__init__(title + ": " + "; ".join(f"{c['field']}: {c['message']}" for c in causes))
        self.title = title
        self.causes = causes


# Fields the server owns: accepted on input (a `get -o yaml` round-trips) and then ignored.
READ_ONLY_FIELDS = ("creationTime", "modificationTime")


def parse_resource(doc: Any, expected: ResourceType | None = None) -> BaseModel:
    """Validate a raw document (already parsed from YAML/JSON) into its resource model."""
    if not isinstance(doc, dict):
        raise InvalidResource([{"field": "(root)", "message": "a resource must be a mapping"}])
    kind = doc.get("type")
    rtype = TYPES.get(kind) if isinstance(kind, str) else None
    if rtype is None:
        known = ", ".join(sorted(TYPES))
        raise InvalidResource([{"field": "type", "message": f"unknown type {kind!r}; known types: {known}"}])
    if expected is not None and rtype is not expected:
        raise InvalidResource(
            [{"field": "type", "message": f"is {rtype.name!r} but the path is for {expected.name!r}"}]
        )
    try:
        return rtype.model.model_validate(doc)
    except ValidationError as exc:
        raise InvalidResource(format_validation_error(exc)) from None


def to_document(model: BaseModel) -> dict[str, Any]:
    """The universal JSON form of a resource: without unset optional fields, type first."""
    # by_alias: fields named after Python keywords (MeshTrafficPermission's `from`) keep Kuma's name.
    return model.model_dump(mode="json", exclude_none=True, by_alias=True)
