"""Kuma's error body `{title, details, causes: [{field, message}]}` and the handlers producing it."""

from __future__ import annotations

import logging
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger("kuma-cp.api")

Cause = dict[str, str]


class ApiError(Exception):
    """An error a client caused (or may act on); rendered as Kuma's error body."""

    def __init__(self, status: int, title: str, details: str, causes: list[Cause] | None = None) -> None:
        super().__init__(f"{title}: {details}")
        self.status = status
        self.title = title
        self.details = details
        self.causes = causes or []


def invalid(causes: list[Cause], details: str = "Resource is not valid") -> ApiError:
    return ApiError(400, "Could not process a resource", details, causes)


def error_response(
    status: int,
    title: str,
    details: str,
    causes: list[Cause] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, object] = {"title": title, "details": details}
    if causes:
        body["causes"] = causes
    return JSONResponse(body, status_code=status, headers=headers)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.title, exc.details, exc.causes)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (method not allowed), in Kuma's shape."""
    assert isinstance(exc, HTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404:
        details = f"no API endpoint {request.url.path}"
    elif exc.status_code == 405:
        details = f"method {request.method} is not allowed on {request.url.path}"
    else:
        details = exc.detail or phrase
    return error_response(exc.status_code, phrase, details, headers=dict(exc.headers or {}))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """Anything else is our bug: log it with the traceback, never send the traceback."""
    log.error("unexpected error serving %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        500, "Internal Server Error", "the control plane failed to serve this request; see its log"
    )
