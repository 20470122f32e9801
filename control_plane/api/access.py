"""Who may change resources: for now, loopback clients when apiServer.authn.localhostIsAdmin is on.

Token-based admin authentication (Kuma's user tokens) comes later; until then a write from any
other address is refused, so exposing the API on 0.0.0.0 never exposes writes.

A browser on the same host is a loopback client too: a page from elsewhere could reach the API
through DNS rebinding. Browsers always send `Origin` with PUT/DELETE, so a write whose Origin is
not a loopback one is refused as well.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse

from starlette.requests import Request

from control_plane.api.errors import ApiError


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
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
    host = urlparse(origin).hostname or ""
    return host == "localhost" or host.endswith(".localhost") or is_loopback(host)


def require_admin(request: Request, localhost_is_admin: bool) -> None:
    client = request.client.host if request.client else None
    origin = request.headers.get("origin")
    if localhost_is_admin and is_loopback(client):
        if is_local_origin(origin):
            return
        raise ApiError(
            403,
            "Access Denied",
            f"admin credentials are required to {request.method} {request.url.path}: a browser page from "
            f"{origin} is not trusted as localhost",
        )
    if localhost_is_admin:
        details = (
            f"admin credentials are required to {request.method} {request.url.path}: only requests from "
            f"localhost are admin, and this one came from {client or 'an unknown address'} "
            "(token-based admin authentication is not available yet)"
        )
    else:
        details = (
            f"admin credentials are required to {request.method} {request.url.path}, and "
            "apiServer.authn.localhostIsAdmin (KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN) is off "
            "(token-based admin authentication is not available yet)"
        )
    raise ApiError(403, "Access Denied", details)
