"""CRUD endpoints of one resource type, over the store (whose calls run in worker threads)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from control_plane.api.access import require_admin
from control_plane.api.bodies import request_document
from control_plane.api.errors import ApiError, Cause, invalid
from control_plane.resources.registry import (
    MESH,
    READ_ONLY_FIELDS,
    InvalidResource,
    ResourceType,
    parse_resource,
    to_document,
)
from control_plane.store.base import ConflictError, ResourceKey, ResourceStore, StoredResource, mesh_key
from control_plane.store.defaults import create_mesh

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_HEADER_FIELDS = ("type", "mesh", "name", *READ_ONLY_FIELDS)


def mesh_missing_cause(mesh: str) -> Cause:
    return {
        "field": "mesh",
        "message": f'mesh "{mesh}" does not exist; create it first (kumactl apply a Mesh)',
    }


def page_params(request: Request) -> tuple[int, int]:
    """`size` (1..1000, default 100) and `offset` (a non-negative integer) of a list request."""
    causes: list[Cause] = []
    size = _int_param(request, "size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE, causes)
    offset = _int_param(request, "offset", 0, 0, None, causes)
    if causes:
        raise ApiError(400, "Invalid query parameters", "size or offset is not valid", causes)
    return size, offset


def _int_param(
    request: Request, name: str, default: int, low: int, high: int | None, causes: list[Cause]
) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    bound = f"between {low} and {high}" if high is not None else f"at least {low}"
    try:
        value = int(raw)
    except ValueError:
        causes.append({"field": name, "message": f"{raw!r} is not an integer {bound}"})
        return default
    if value < low or (high is not None and value > high):
        causes.append({"field": name, "message": f"{raw!r} is not an integer {bound}"})
    return value


def list_body(
    request: Request, items: list[StoredResource], total: int, size: int, offset: int
) -> dict[str, Any]:
    following = offset + len(items)
    next_url = (
        str(request.url.include_query_params(size=size, offset=following)) if following < total else None
    )
    return {"total": total, "items": [item.document() for item in items], "next": next_url}


def spec_of(document: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps: the document without its header and read-only fields."""
    return {k: v for k, v in document.items() if k not in _HEADER_FIELDS}


@dataclass(frozen=True)
class ResourceEndpoints:
    store: ResourceStore
    rtype: ResourceType
    # Held across "the Mesh exists" + write, and across a Mesh's cascading delete, so that an API
    # write cannot land in a Mesh being deleted and be orphaned. Shared by every type's endpoints.
    mesh_lock: asyncio.Lock

    def _key(self, request: Request) -> ResourceKey:
        params = request.path_params
        return ResourceKey(self.rtype.name, params["mesh"] if self.rtype.mesh_scoped else "", params["name"])

    def _describe(self, key: ResourceKey) -> str:
        where = f' in mesh "{key.mesh}"' if key.mesh else ""
        return f'{key.type} "{key.name}"{where}'

    async def list_items(self, request: Request) -> Response:
        """All of this type; in the path's mesh when the route has one."""
        size, offset = page_params(request)
        mesh = request.path_params.get("mesh")
        items, total = await run_in_threadpool(self.store.list, self.rtype.name, mesh, offset, size)
        return JSONResponse(list_body(request, items, total, size, offset))

    async def get(self, request: Request) -> Response:
        key = self._key(request)
        stored = await run_in_threadpool(self.store.get, key)
        if stored is None:
            raise ApiError(404, "Could not retrieve a resource", f"{self._describe(key)} not found")
        return JSONResponse(stored.document())

    async def put(self, request: Request) -> Response:
        require_admin(request)
        key = self._key(request)
        doc = await request_document(request)
        async with self.mesh_lock:
            spec = await self._validate(doc, key)
            try:
                stored, created = await run_in_threadpool(self._write, key, spec)
            except ConflictError as exc:
                raise ApiError(409, "Conflict", str(exc)) from None
        return JSONResponse(stored.document(), status_code=201 if created else 200)

    def _write(self, key: ResourceKey, spec: dict[str, Any]) -> tuple[StoredResource, bool]:
        """Upsert; a new Mesh comes with its initial policies (one transaction)."""
        if key.type == MESH.name and self.store.get(key) is None:
            return create_mesh(self.store, key.name, spec), True
        return self.store.upsert(key, spec)

    async def delete(self, request: Request) -> Response:
        require_admin(request)
        key = self._key(request)
        async with self.mesh_lock:
            # A Mesh takes its contents with it (contents first: a failure halfway leaves no orphans).
            if key.type == MESH.name and await run_in_threadpool(self.store.get, key) is not None:
                await run_in_threadpool(self.store.delete_mesh_contents, key.name)
            try:
                deleted = await run_in_threadpool(self.store.delete, key)
            except ConflictError as exc:
                raise ApiError(409, "Conflict", str(exc)) from None
        if not deleted:
            raise ApiError(404, "Could not delete a resource", f"{self._describe(key)} not found")
        return JSONResponse({})

    async def _validate(self, doc: Any, key: ResourceKey) -> dict[str, Any]:
        """The spec to store, or a 400 naming every offending field."""
        if not isinstance(doc, dict):
            raise invalid([{"field": "(root)", "message": "a resource must be a mapping (an object)"}])
        causes = self._path_mismatches(doc, key)
        if any(c["field"] == "type" for c in causes):
            raise invalid(causes)  # the rest would be judged against the wrong schema
        doc = {k: v for k, v in doc.items() if k not in READ_ONLY_FIELDS}
        doc.update(type=self.rtype.name, name=key.name)
        if self.rtype.mesh_scoped:
            doc["mesh"] = key.mesh
        model = None
        try:
            model = parse_resource(doc, self.rtype)
        except InvalidResource as exc:
            causes.extend(c for c in exc.causes if c not in causes)
        if self.rtype.mesh_scoped and await run_in_threadpool(self.store.get, mesh_key(key.mesh)) is None:
            causes.append(mesh_missing_cause(key.mesh))
        if causes or model is None:
            raise invalid(causes)
        return spec_of(to_document(model))

    def _path_mismatches(self, doc: dict[str, Any], key: ResourceKey) -> list[Cause]:
        expected = {"type": self.rtype.name, "name": key.name}
        if self.rtype.mesh_scoped:
            expected["mesh"] = key.mesh
        causes = []
        for field, want in expected.items():
            got = doc.get(field)
            if got is not None and got != want:
                causes.append({"field": field, "message": f"is {got!r} but the path says {want!r}"})
        return causes
