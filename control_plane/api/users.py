"""Kuma's `POST /tokens/user` (issue a user token; admin only) and the admin-only, read-only
`GET /global-secrets[/{name}]` (where an admin reads `admin-user-token`, as in Kuma)."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from control_plane.api.access import require_admin
from control_plane.api.bodies import request_document
from control_plane.api.errors import ApiError, invalid
from control_plane.resources.common import format_validation_error
from control_plane.store.base import ResourceKey, ResourceStore
from control_plane.tokens.user import GLOBAL_SECRET, User, issue_user_token
from kuma_common.api_paths import GLOBAL_SECRETS_PATH, USER_TOKENS_PATH
from kuma_common.durations import DurationError, parse_positive_duration


class UserTokenBody(BaseModel):
    """Kuma's request: `validFor` is required (no default lifetime for user tokens)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    groups: list[str] = Field(default_factory=list)
    validFor: str = Field(min_length=1)


def user_routes(store: ResourceStore, issuer_enabled: bool = True) -> list[Route]:
    async def generate(request: Request) -> Response:
        require_admin(request)
        if not issuer_enabled:
            raise ApiError(
                400,
                "Could not issue a token",
                "issuing tokens using the control plane is disabled "
                "(KUMA_API_SERVER_AUTHN_TOKENS_ENABLE_ISSUER=false)",
            )
        body = await _user_token_body(request)
        try:
            valid_for = parse_positive_duration(body.validFor)
        except DurationError as exc:
            raise invalid([{"field": "validFor", "message": str(exc)}], "Invalid request") from None
        user = User(body.name, tuple(body.groups))
        token = await asyncio.to_thread(issue_user_token, store, user, valid_for)
        return PlainTextResponse(token)

    async def list_secrets(request: Request) -> Response:
        require_admin(request)
        items, total = await run_in_threadpool(store.list, GLOBAL_SECRET, None)
        return JSONResponse({"total": total, "items": [i.document() for i in items], "next": None})

    async def get_secret(request: Request) -> Response:
        require_admin(request)
        name = request.path_params["name"]
        stored = await run_in_threadpool(store.get, ResourceKey(GLOBAL_SECRET, "", name))
        if stored is None:
            raise ApiError(404, "Could not retrieve a resource", f'GlobalSecret "{name}" not found')
        return JSONResponse(stored.document())

    return [
        Route(USER_TOKENS_PATH, generate, methods=["POST"]),
        Route(GLOBAL_SECRETS_PATH, list_secrets, methods=["GET"]),
        Route(GLOBAL_SECRETS_PATH + "/{name}", get_secret, methods=["GET"]),
    ]


async def _user_token_body(request: Request) -> UserTokenBody:
    doc = await request_document(request)
    if not isinstance(doc, dict):
        raise invalid([{"field": "(body)", "message": "must be an object"}], "Invalid request")
    try:
        return UserTokenBody.model_validate(doc)
    except ValidationError as exc:
        raise invalid(format_validation_error(exc), "Invalid request") from None
