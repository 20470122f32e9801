"""Kuma's user tokens: who calls the admin API (`KUMA_API_SERVER_AUTHN_TYPE=tokens`).

A user token is a JWT (RS256) with Kuma's claims `Name`, `Groups`, `jti`, `iat`, `nbf`, `exp`,
and the serial of its signing key as header `kid`. Signing keys are global secrets named
`user-token-signing-key-<serial>` (created at first start); the newest signs, every stored one
verifies. At first start the control plane also issues a 10-year token for the admin user and
keeps it as the global secret `admin-user-token` (base64 of the token, as Kuma), which an admin
reads through the API (`GET /global-secrets/admin-user-token`).

Rejections carry a reason class for the caller and a detail for the log; never the token.
"""

from __future__ import annotations

import base64
import functools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from control_plane.store.base import ConflictError, ResourceKey, ResourceStore
from control_plane.tokens.keys import (
    load_private_key_pem,
    new_private_key,
    private_key_pem,
    public_key_of,
    stored_serials,
)
from control_plane.tokens.verify import TokenRejected

GLOBAL_SECRET = "GlobalSecret"
SIGNING_KEY_PREFIX = "user-token-signing-key-"
ADMIN_USER_TOKEN = "admin-user-token"
ALGORITHM = "RS256"
ADMIN_TOKEN_VALIDITY_S = 10 * 365 * 24 * 3600  # Kuma: 24h * 365 * 10
CLOCK_SKEW_S = 5  # Kuma back-dates iat/nbf by 5 s (and adds them to exp)
LEEWAY_S = 5
MAX_TOKEN_BYTES = 8192  # a user token is ~700 bytes; anything far larger is not one

ADMIN_GROUP = "mesh-system:admin"
UNAUTHENTICATED_GROUP = "mesh-system:unauthenticated"
AUTHENTICATED_GROUP = "mesh-system:authenticated"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_admin(self) -> bool:
        """Kuma's default static access: user or group `mesh-system:admin`."""
        return self.name == ADMIN_GROUP or ADMIN_GROUP in self.groups

    def authenticated(self) -> User:
        return User(self.name, (*self.groups, AUTHENTICATED_GROUP))

    def __str__(self) -> str:
        return f"{self.name}/{','.join(self.groups)}"


ADMIN = User(ADMIN_GROUP, (ADMIN_GROUP,))
ANONYMOUS = User("mesh-system:anonymous", (UNAUTHENTICATED_GROUP,))


def signing_key_key(serial: int) -> ResourceKey:
    return ResourceKey(GLOBAL_SECRET, "", f"{SIGNING_KEY_PREFIX}{serial}")


def admin_token_key() -> ResourceKey:
    return ResourceKey(GLOBAL_SECRET, "", ADMIN_USER_TOKEN)


def _serials(store: ResourceStore) -> list[int]:
    return stored_serials(store, GLOBAL_SECRET, None, SIGNING_KEY_PREFIX)


def ensure_signing_key(store: ResourceStore) -> tuple[str, str]:
    """(kid, stored data) of the newest user-token signing key, made (serial 1) if there is none."""
    for _ in range(3):
        existing = _serials(store)
        if not existing:
            data = base64.b64encode(private_key_pem(new_private_key())).decode()
            try:
                store.upsert(signing_key_key(1), {"data": data}, expected_version=0)
            except ConflictError:  # another instance made it first: use theirs
                continue
            return "1", data
        stored = store.get(signing_key_key(existing[-1]))
        if stored is not None:
            return str(existing[-1]), stored.spec["data"]
    raise ConflictError("the user-token signing keys kept changing; try again")


def user_claims(user: User, valid_for_s: float, now: float, jti: str) -> dict[str, Any]:
    issued = int(now) - CLOCK_SKEW_S
    return {
        "Name": user.name,
        "Groups": list(user.groups),
        "jti": jti,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(valid_for_s) + CLOCK_SKEW_S,
    }


def sign_user_token(
    user: User, valid_for_s: float, key_pem: bytes, kid: str, now: float | None = None
) -> str:
    """Offline signing (`kumactl generate user-token --signing-key-path`)."""
    claims = user_claims(user, valid_for_s, time.time() if now is None else now, str(uuid.uuid4()))
    return jwt.encode(claims, load_private_key_pem(key_pem), algorithm=ALGORITHM, headers={"kid": kid})


def issue_user_token(store: ResourceStore, user: User, valid_for_s: float, now: float | None = None) -> str:
    kid, data = ensure_signing_key(store)
    claims = user_claims(user, valid_for_s, time.time() if now is None else now, str(uuid.uuid4()))
    key = load_private_key_pem(base64.b64decode(data))
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})


def bootstrap_admin_token(store: ResourceStore) -> bool:
    """Kuma's first start: the admin user's token as the global secret `admin-user-token`, unless
    one exists. True if it was created now."""
    if store.get(admin_token_key()) is not None:
        return False
    token = issue_user_token(store, ADMIN, ADMIN_TOKEN_VALIDITY_S)
    data = base64.b64encode(token.encode()).decode()
    try:
        store.upsert(admin_token_key(), {"data": data}, expected_version=0)
    except ConflictError:
        return False
    return True


def verify_user_token(store: ResourceStore, token: str, now: float | None = None) -> User:
    """The user the token proves, with `mesh-system:authenticated` added; TokenRejected otherwise."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRejected("malformed", f"the token is longer than {MAX_TOKEN_BYTES} bytes")
    kid = _kid(token)
    stored = store.get(signing_key_key(int(kid))) if kid.isdigit() and len(kid) < 10 else None
    if stored is None:
        raise TokenRejected("unknown key", f"no user-token signing key with kid {kid!r}")
    claims = _verified_claims(token, stored.spec["data"])
    user = _user_of(claims)
    _check_time(claims, time.time() if now is None else now)
    return user.authenticated()


def _kid(token: str) -> str:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise TokenRejected("malformed", "not a JWT") from None
    kid = header.get("kid")
    if header.get("alg") != ALGORITHM or not isinstance(kid, str) or not kid:
        raise TokenRejected("malformed", "not an RS256 token with a kid")
    return kid


# Only tokens whose signature verified are cached (a rejection raises, and lru_cache keeps no
# exceptions); the key's stored text is part of the cache key, so a removed key is never trusted.
@functools.lru_cache(maxsize=1024)
def _verified_claims(token: str, key_data: str) -> dict[str, Any]:
    options = {"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False}
    try:
        return jwt.decode(token, public_key_of(key_data), algorithms=[ALGORITHM], options=options)
    except jwt.InvalidSignatureError:
        raise TokenRejected("bad signature", "the signature does not match the user-token key") from None
    except jwt.InvalidTokenError as exc:
        raise TokenRejected("malformed", type(exc).__name__) from None


def _user_of(claims: dict[str, Any]) -> User:
    name, groups = claims.get("Name"), claims.get("Groups") or []
    # A dataplane token is signed by a mesh key and would not verify here; its claims are refused
    # too, so no token type can stand in for another.
    if "Mesh" in claims or "Type" in claims:
        raise TokenRejected("malformed", "not a user token")
    if not isinstance(name, str) or not name or not _strings(groups):
        raise TokenRejected("malformed", "Name or Groups is not valid")
    if not isinstance(claims.get("exp"), int):
        raise TokenRejected("malformed", "the token has no exp")
    return User(name, tuple(groups))


def _strings(values: object) -> bool:
    return (
        isinstance(values, Sequence)
        and not isinstance(values, str)
        and all(isinstance(v, str) for v in values)
    )


def _check_time(claims: dict[str, Any], now: float) -> None:
    if now > claims["exp"] + LEEWAY_S:
        raise TokenRejected("expired", f"expired at {claims['exp']}")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and not isinstance(nbf, bool) and now < nbf - LEEWAY_S:
        raise TokenRejected("not yet valid", f"not valid before {nbf}")
