"""Who may change resources: for now, loopback clients when apiServer.authn.localhostIsAdmin is on.

Token-based admin authentication (Kuma's user tokens) comes later; until then a write from any
other address is refused, so exposing the API on 0.0.0.0 never exposes writes.
"""

from __future__ import annotations

import ipaddress

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


def require_admin(request: Request, localhost_is_admin: bool) -> None:
    client = request.client.host if request.client else None
    if localhost_is_admin and is_loopback(client):
        return
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
