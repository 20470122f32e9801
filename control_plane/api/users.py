"""Kuma's `POST /tokens/user` (issue a user token; admin only). An admin reads the admin user's
token at `GET /global-secrets/admin-user-token`, as in Kuma: GlobalSecret is a resource type
(control_plane/resources/secrets.py), admin-only for reads and writes."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from control_plane.api.access import require_admin
from control_plane.api.bodies import request_document
from control_plane.api.errors import ApiError, invalid
from control_plane.resources.common import format_validation_error
from control_plane.store.base import ResourceStore
from control_plane.tokens.user import User, issue_user_token
from kuma_common.api_paths import USER_TOKENS_PATH
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

    return [
        Route(USER_TOKENS_PATH, generate, methods=["POST"]),
    ]


async def _user_token_body(request: Request) -> UserTokenBody:
    doc = await request_document(request)
    if not isinstance(doc, dict):
        raise invalid([{"field": "(body)", "message": "must be an object"}], "Invalid request")
    try:
        return UserTokenBody.model_validate(doc)
    except ValidationError as exc:
        raise invalid(format_validation_error(exc), "Invalid request") from None
