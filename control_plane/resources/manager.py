"""The resource manager: the one place that enforces the resource rules, over any store.

Everything that writes resources (the REST API, the Dataplane lifecycle, the VIP allocator, tokens,
the CA) goes through it, on every store type, so the rules hold whichever control-plane instance
writes:

- a mesh-scoped resource needs its Mesh: every such write carries `requires=<its Mesh>`, checked by
  the store inside the write's transaction, so a write racing a Mesh's deletion (on this instance
  or another) fails instead of leaving an orphan;
- deleting a Mesh deletes everything in it, and deleting a resource deletes what it owns, in one
  transaction (the store's `delete(cascade_mesh=...)` and `Write.owner`);
- a new Mesh comes with Kuma's initial policies, in the Mesh's own transaction;
- optimistic concurrency: a write or delete may name the version it read (`expected_version`); a
  stale one raises ConflictError (the API's 409) and changes nothing;
- documents from users are validated (`apply`): every offending field named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from control_plane.resources.registry import (
    MESH,
    READ_ONLY_FIELDS,
    InvalidResource,
    ResourceType,
    parse_resource,
    to_document,
)
from control_plane.store.base import (
    ConflictError,
    Guard,
    MissingError,
    ResourceKey,
    StoredResource,
    StoreWrapper,
    Write,
    mesh_key,
)
from control_plane.store.defaults import initial_policies

_HEADER_FIELDS = ("type", "mesh", "name", *READ_ONLY_FIELDS)


def mesh_missing_cause(mesh: str) -> dict[str, str]:
    return {
        "field": "mesh",
        "message": f'mesh "{mesh}" does not exist; create it first (kumactl apply a Mesh)',
    }


def spec_of(document: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps: the document without its header and read-only fields."""
    return {k: v for k, v in document.items() if k not in _HEADER_FIELDS}


class ResourceManager(StoreWrapper):
    """A store that applies the rules above; reads, events and the leader lock are `inner`'s."""

    # --- writes: with the rules ---------------------------------------------------------------
    def upsert_all(self, writes: Sequence[Write]) -> list[tuple[StoredResource, bool]]:
        """The writes in one transaction, each mesh-scoped one requiring its Mesh."""
        return self.inner.upsert_all([_with_mesh_required(write) for write in writes])

    def delete(
        self,
        key: ResourceKey,
        expected_version: int | None = None,
        cascade_mesh: bool = False,
        guards: Sequence[Guard] = (),
    ) -> bool:
        """Remove `key` and what it owns; a Mesh takes its contents with it."""
        return self.inner.delete(key, expected_version, cascade_mesh or key.type == MESH.name, guards)

    def create_mesh(
        self, name: str, spec: dict[str, Any], expected_version: int | None = 0
    ) -> tuple[StoredResource, bool]:
        """Write Mesh `name` (expected_version 0: create only; None: create or replace); a new one
        comes with its initial policies in the same transaction."""
        for attempt in (1, 2):
            writes = [Write(mesh_key(name), spec, expected_version)]
            if self.inner.get(mesh_key(name)) is None:
                writes += initial_policies(name, spec)
            try:
                return self.upsert_all(writes)[0]
            except ConflictError:
                # Created meanwhile by another writer: its initial policies are there; replace it
                # if that is what was asked.
                if expected_version is not None or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # --- the API's operations ------------------------------------------------------------------
    def apply(
        self, rtype: ResourceType, key: ResourceKey, doc: dict[str, Any], expected_version: int | None = None
    ) -> tuple[StoredResource, bool]:
        """Validate a user's document for `key` and write it: (stored, created). Raises
        InvalidResource naming every offending field (a missing Mesh included) or ConflictError."""
        spec = self.validate(rtype, key, doc)
        try:
            if rtype is MESH:
                return self.create_mesh(key.name, spec, expected_version)
            return self.upsert_all([Write(key, spec, expected_version)])[0]
        except MissingError as exc:  # the Mesh went away after validate() saw it
            raise InvalidResource([mesh_missing_cause(exc.key.name)]) from None

    def validate(self, rtype: ResourceType, key: ResourceKey, doc: dict[str, Any]) -> dict[str, Any]:
        """The spec to store for `doc` at `key`, or InvalidResource naming every offending field."""
        doc = {k: v for k, v in doc.items() if k not in READ_ONLY_FIELDS}
        doc.update(type=rtype.name, name=key.name)
        if rtype.mesh_scoped:
            doc["mesh"] = key.mesh
        causes: list[dict[str, str]] = []
        model = None
        try:
            model = parse_resource(doc, rtype)
        except InvalidResource as exc:
            causes.extend(exc.causes)
        if rtype.mesh_scoped and self.inner.get(mesh_key(key.mesh)) is None:
            causes.append(mesh_missing_cause(key.mesh))
        if causes or model is None:
            raise InvalidResource(causes)
        return spec_of(to_document(model))


def _with_mesh_required(write: Write) -> Write:
    if write.key.mesh and write.requires is None:
        return replace(write, requires=mesh_key(write.key.mesh))
    return write
