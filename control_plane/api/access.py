"""Who calls the admin API, and what an admin operation requires (Kuma's authn and static access).

Every request is given a user by `Authenticate` (an ASGI middleware), as Kuma's authenticators do:

- a direct loopback request, when `apiServer.authn.localhostIsAdmin` is on (the default): the admin
  user. "Direct" as in Kuma: a loopback peer, no proxy headers (`Forwarded`, `X-Forwarded-For`,
  `X-Real-IP`), a loopback `Host` and, from a browser, a loopback `Origin` and no cross-site
  `Sec-Fetch-Site` — a page elsewhere reaching localhost (DNS rebinding) is not admin;
- otherwise `Authorization: Bearer <user token>` (`apiServer.authn.type: tokens`): the token's
  user, plus the group `mesh-system:authenticated`; a token that does not verify is a 401 (the
  reason class is returned and logged, the token never);
- otherwise the anonymous user, group `mesh-system:unauthenticated`.

Admin operations (every resource write, issuing/revoking tokens, signing keys, global secrets) need
user or group `mesh-system:admin` (Kuma's default static access). Reads of resources are open to
everyone, as in Kuma. Unlike Kuma, where an anonymous caller may write non-secret resources, every
write here is an admin operation.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from control_plane.api.errors import ApiError
from control_plane.store.base import ResourceStore
from control_plane.tokens.user import ADMIN, ANONYMOUS, User, verify_user_token
from control_plane.tokens.verify import TokenRejected

log = logging.getLogger("kuma-cp.api.authn")

BEARER = "bearer "
PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")
_USER = "user"
_WHY_NOT_ADMIN = "why_not_admin"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_local_origin(origin: str | None) -> bool:
    """No Origin (not a browser), or a page served from this host's loopback."""
    if origin is None:
        return True
    return is_loopback(urlparse(origin).hostname or "")


def _host_of(authority: str) -> str:
    return urlparse(f"//{authority}").hostname or ""


def not_direct_loopback(client: str | None, headers: dict[bytes, str]) -> str | None:
    """Why this request is not a direct loopback call (None if it is); Kuma's conditions."""
    if not is_loopback(client):
        return (
            f"only requests from localhost are admin, and this one came from {client or 'an unknown address'}"
        )
    if any(name in headers for name in PROXY_HEADERS):
        return (
            "the request came through a proxy (Forwarded / X-Forwarded-For / X-Real-IP), "
            "so it is not trusted as localhost"
        )
    host = headers.get(b"host", "")
    if not is_loopback(_host_of(host)):
        return f"its Host {host!r} is not a loopback name, so it is not trusted as localhost"
    if headers.get(b"sec-fetch-site", "") not in ("", "same-origin", "none"):
        return "a browser marked it cross-site, so it is not trusted as localhost"
    origin = headers.get(b"origin")
    if not is_local_origin(origin):
        return f"a browser page from {origin} is not trusted as localhost"
    return None


@dataclass
class Authenticate:
    """ASGI middleware: puts the caller's `User` (and why it is not admin) into the request state."""

    app: ASGIApp
    store: ResourceStore
    localhost_is_admin: bool = True
    tokens: bool = True  # apiServer.authn.type == "tokens"
    verify: Callable[[ResourceStore, str], User] = verify_user_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = scope.get("client")
        why = not_direct_loopback(client[0] if client else None, headers)
        state = scope.setdefault("state", {})
        if self.localhost_is_admin and why is None:
            state[_USER] = ADMIN.authenticated()  # as Kuma: a token sent as well is not looked at
        else:
            authorization = headers.get(b"authorization", "")
            if self.tokens and authorization[: len(BEARER)].lower() == BEARER:
                try:
                    user = await run_in_threadpool(
                        self.verify, self.store, authorization[len(BEARER) :].strip()
                    )
                except TokenRejected as exc:
                    log.info("user token rejected (%s): %s", exc.reason, exc.detail)
                    await _unauthenticated(send, exc.reason)
                    return
                state[_USER] = user
            else:
                state[_USER] = ANONYMOUS
            if not self.localhost_is_admin and why is None:
                why = (
                    "apiServer.authn.localhostIsAdmin (KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN) is off, "
                    "so localhost is not admin"
                )
            state[_WHY_NOT_ADMIN] = why
        await self.app(scope, receive, send)


async def _unauthenticated(send: Send, reason: str) -> None:
    body = json.dumps(
        {"title": "Invalid authentication data", "details": f"the user token is not valid: {reason}"}
    )
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def user_of(request: Request) -> User:
    state: dict[str, Any] = request.scope.get("state") or {}
    return state.get(_USER, ANONYMOUS)


def require_admin(request: Request) -> None:
    """403 unless the caller is an admin (user or group mesh-system:admin)."""
    user = user_of(request)
    if user.is_admin:
        return
    action = f"admin credentials are required to {request.method} {request.url.path}"
    if user.name != ANONYMOUS.name:
        raise ApiError(403, "Access Denied", f"{action}: user {user} is not an admin")
    why = (request.scope.get("state") or {}).get(_WHY_NOT_ADMIN) or "the caller is anonymous"
    hint = (
        "send an admin user token (Authorization: Bearer ...; kumactl config control-planes add "
        "--auth-type=tokens --auth-conf token=...)"
    )
    raise ApiError(403, "Access Denied", f"{action}: {why}; {hint}")
