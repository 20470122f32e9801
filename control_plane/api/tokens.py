"""Token endpoints (admin only): `POST /tokens/dataplane` issues, `.../revocations` revokes by jti,
`.../signing-keys/{mesh}` lists (GET) and rotates (POST) a mesh's signing keys, and
`.../signing-keys/{mesh}/{kid}` (DELETE) removes one: the tokens it signed stop verifying."""

from __future__ import annotations

import asyncio
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from control_plane.api.access import require_admin
from control_plane.api.bodies import request_document
from control_plane.api.errors import ApiError, invalid
from control_plane.resources.common import DEFAULT_MESH, format_validation_error
from control_plane.store.base import ResourceStore, mesh_key
from control_plane.tokens import DEFAULT_VALIDITY_S, TokenRequest, issue_token, revoke
from control_plane.tokens.keys import remove_signing_key, rotate_signing_key, serials
from kuma_common.api_paths import REVOCATIONS_PATH, SIGNING_KEYS_PATH, TOKENS_PATH
from kuma_common.durations import DurationError, parse_positive_duration

M = TypeVar("M", bound=BaseModel)


class DataplaneTokenBody(BaseModel):
    """Kuma's request body; `validFor` is a Go duration (default: 10 years, as Kuma)."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    mesh: str = DEFAULT_MESH
    tags: dict[str, list[str]] = Field(default_factory=dict)
    type: Literal["dataplane"] = "dataplane"
    validFor: str | None = None


class RevocationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mesh: str = Field(min_length=1)
    jti: str = Field(min_length=1)


def token_routes(store: ResourceStore) -> list[Route]:
    async def generate(request: Request) -> Response:
        require_admin(request)
        body = await _body(request, DataplaneTokenBody)
        token_request = TokenRequest(body.mesh, body.name, body.tags, _valid_for(body.validFor))
        _require_mesh(store, body.mesh)
        token = await asyncio.to_thread(issue_token, store, token_request)
        return PlainTextResponse(token)

    async def revocations(request: Request) -> Response:
        require_admin(request)
        body = await _body(request, RevocationBody)
        _require_mesh(store, body.mesh)
        added = await asyncio.to_thread(revoke, store, body.mesh, body.jti)
        return JSONResponse({"mesh": body.mesh, "jti": body.jti, "alreadyRevoked": not added})

    async def signing_keys(request: Request) -> Response:
        require_admin(request)
        mesh = request.path_params["mesh"]
        _require_mesh(store, mesh)
        if request.method == "POST":
            key = await asyncio.to_thread(rotate_signing_key, store, mesh)
            return JSONResponse({"mesh": mesh, "kid": key.kid}, status_code=201)
        kids = [str(serial) for serial in await asyncio.to_thread(serials, store, mesh)]
        return JSONResponse({"mesh": mesh, "kids": kids})

    async def signing_key(request: Request) -> Response:
        require_admin(request)
        mesh, kid = request.path_params["mesh"], request.path_params["kid"]
        _require_mesh(store, mesh)
        if not await asyncio.to_thread(remove_signing_key, store, mesh, kid):
            cause = [{"field": "kid", "message": "no such signing key"}]
            raise ApiError(404, "Not found", f'mesh "{mesh}" has no signing key {kid!r}', cause)
        return JSONResponse({"mesh": mesh, "kid": kid, "removed": True})

    return [
        Route(TOKENS_PATH, generate, methods=["POST"]),
        Route(REVOCATIONS_PATH, revocations, methods=["POST"]),
        Route(SIGNING_KEYS_PATH + "/{mesh}", signing_keys, methods=["GET", "POST"]),
        Route(SIGNING_KEYS_PATH + "/{mesh}/{kid}", signing_key, methods=["DELETE"]),
    ]


async def _body(request: Request, model: type[M]) -> M:
    doc = await request_document(request)
    if not isinstance(doc, dict):
        raise invalid([{"field": "(body)", "message": "must be an object"}], "Request is not valid")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise invalid(format_validation_error(exc), "Request is not valid") from None


def _valid_for(text: str | None) -> float:
    if text is None:
        return DEFAULT_VALIDITY_S
    try:
        return parse_positive_duration(text)
    except DurationError as exc:
        raise invalid([{"field": "validFor", "message": str(exc)}], "Request is not valid") from None


def _require_mesh(store: ResourceStore, mesh: str) -> None:
    if store.get(mesh_key(mesh)) is None:
        raise ApiError(
            404, "Not found", f'mesh "{mesh}" does not exist', [{"field": "mesh", "message": "not found"}]
        )
