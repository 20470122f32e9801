"""CRUD endpoints of one resource type, over the resource manager (whose calls run in worker threads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from control_plane.api.access import require_admin
from control_plane.api.bodies import request_document
from control_plane.api.errors import ApiError, Cause, invalid
from control_plane.resources.manager import ResourceManager
from control_plane.resources.registry import InvalidResource, ResourceType
from control_plane.store.base import ConflictError, ResourceKey, StoredResource

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


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


@dataclass(frozen=True)
class ResourceEndpoints:
    """Reads from the store, writes through the resource manager (which enforces the rules inside
    the store's transaction); admin-only types (secrets) need an admin for reads too. Versions:
    every response carries the resource's `ETag`; a PUT or DELETE with `If-Match` (that ETag) is
    refused with 409 if someone changed it meanwhile."""

    manager: ResourceManager
    rtype: ResourceType

    def _key(self, request: Request) -> ResourceKey:
        params = request.path_params
        return ResourceKey(self.rtype.name, params["mesh"] if self.rtype.mesh_scoped else "", params["name"])

    def _describe(self, key: ResourceKey) -> str:
        where = f' in mesh "{key.mesh}"' if key.mesh else ""
        return f'{key.type} "{key.name}"{where}'

    def _check_read(self, request: Request) -> None:
        if self.rtype.admin_only:  # secrets: reading one is as sensitive as writing it
            require_admin(request)

    async def list_items(self, request: Request) -> Response:
        """All of this type; in the path's mesh when the route has one."""
        self._check_read(request)
        size, offset = page_params(request)
        mesh = request.path_params.get("mesh")
        items, total = await run_in_threadpool(self.manager.list, self.rtype.name, mesh, offset, size)
        return JSONResponse(list_body(request, items, total, size, offset))

    async def get(self, request: Request) -> Response:
        self._check_read(request)
        key = self._key(request)
        stored = await run_in_threadpool(self.manager.get, key)
        if stored is None:
            raise ApiError(404, "Could not retrieve a resource", f"{self._describe(key)} not found")
        return _with_etag(JSONResponse(stored.document()), stored)

    async def put(self, request: Request) -> Response:
        require_admin(request)
        key = self._key(request)
        expected = expected_version(request)
        doc = await request_document(request)
        if not isinstance(doc, dict):
            raise invalid([{"field": "(root)", "message": "a resource must be a mapping (an object)"}])
        mismatches = self._path_mismatches(doc, key)
        if any(c["field"] == "type" for c in mismatches):
            raise invalid(mismatches)  # the rest would be judged against the wrong schema
        try:
            stored, created = await run_in_threadpool(self._apply, key, doc, expected, mismatches)
        except InvalidResource as exc:
            raise invalid(exc.causes) from None
        except ConflictError as exc:
            raise ApiError(409, "Conflict", str(exc)) from None
        return _with_etag(JSONResponse(stored.document(), status_code=201 if created else 200), stored)

    def _apply(
        self, key: ResourceKey, doc: dict[str, Any], expected: int | None, mismatches: list[Cause]
    ) -> tuple[StoredResource, bool]:
        try:
            if mismatches:  # reported with the document's own faults, all at once
                self.manager.validate(self.rtype, key, doc)
                raise InvalidResource(mismatches)
            return self.manager.apply(self.rtype, key, doc, expected)
        except InvalidResource as exc:
            raise InvalidResource([*mismatches, *(c for c in exc.causes if c not in mismatches)]) from None

    async def delete(self, request: Request) -> Response:
        require_admin(request)
        key = self._key(request)
        expected = expected_version(request)
        try:
            deleted = await run_in_threadpool(self.manager.delete, key, expected)
        except ConflictError as exc:
            raise ApiError(409, "Conflict", str(exc)) from None
        if not deleted:
            raise ApiError(404, "Could not delete a resource", f"{self._describe(key)} not found")
        return JSONResponse({})

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


def expected_version(request: Request) -> int | None:
    """The version an `If-Match` header names (an ETag this API sent: `"<version>"`), None if absent."""
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    value = raw.strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"')
    if not value.isdigit() or len(value) > 18:
        raise ApiError(
            400,
            "Invalid If-Match header",
            f'If-Match {raw[:40]!r} is not an ETag of this API (a quoted resource version, e.g. "3")',
        )
    return int(value)


def _with_etag(response: Response, stored: StoredResource) -> Response:
    response.headers["ETag"] = f'"{stored.version}"'
    return response
