"""Verifying a dataplane token against the Dataplane that presents it.

A rejection carries one reason class (the only thing a client is told, see docs/identity.md) and
a detail for the control plane's own log. Neither ever contains the token.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import jwt

from control_plane.resources.common import SERVICE_TAG
from control_plane.resources.dataplane import Dataplane
from control_plane.store.base import ResourceStore
from control_plane.tokens.issue import ALGORITHM, TOKEN_TYPE
from control_plane.tokens.keys import public_key_of, stored_key_data
from control_plane.tokens.revocation import revoked_ids

LEEWAY_S = 5

Reason = Literal[
    "missing",
    "malformed",
    "bad signature",
    "unknown key",
    "expired",
    "not yet valid",
    "revoked",
    "wrong dataplane",
    "wrong mesh",
    "tags not allowed",
]
REASONS: tuple[Reason, ...] = get_args(Reason)


class TokenRejected(Exception):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(reason)
        self.reason: Reason = reason
        self.detail = detail or reason


@dataclass(frozen=True)
class VerifiedToken:
    name: str
    mesh: str
    tags: dict[str, list[str]]
    jti: str
    kid: str
    expires: int


def verify_token(
    store: ResourceStore, token: str | None, dataplane: Dataplane, now: float | None = None
) -> VerifiedToken:
    """The token's claims if it proves `dataplane`; TokenRejected otherwise."""
    verified = authenticate_token(store, token, now)
    check_dataplane(verified, dataplane)
    return verified


def authenticate_token(store: ResourceStore, token: str | None, now: float | None = None) -> VerifiedToken:
    """The claims of a token signed by a stored key of its mesh, in time and not revoked; nothing of
    a Dataplane yet (so a caller can be authenticated before anything it sent is parsed)."""
    if not token:
        raise TokenRejected("missing", "no token was sent")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenRejected("malformed", f"the token is longer than {MAX_TOKEN_CHARS} characters")
    kid, mesh, claims = _signed_claims(store, token)
    verified = _parse_claims(claims, kid)
    _check_time(claims, time.time() if now is None else now)
    if verified.jti in revoked_ids(store, mesh):
        raise TokenRejected("revoked", f"token {verified.jti} is revoked in mesh {mesh!r}")
    return verified


def check_dataplane(token: VerifiedToken, dataplane: Dataplane) -> None:
    """The rules between a valid token and the Dataplane presenting it (pure)."""
    if token.mesh != dataplane.mesh:
        raise TokenRejected("wrong mesh", f"token for mesh {token.mesh!r} used in mesh {dataplane.mesh!r}")
    if token.name and token.name != dataplane.name:
        raise TokenRejected(
            "wrong dataplane", f"token for dataplane {token.name!r} used by {dataplane.name!r}"
        )
    inbound_tags = [inbound.tags for inbound in dataplane.networking.inbound]
    refused = refused_tag(token.tags, inbound_tags)
    if refused is not None:
        raise TokenRejected("tags not allowed", refused)


def refused_tag(
    token_tags: Mapping[str, Sequence[str]], inbound_tags: Iterable[Mapping[str, str]]
) -> str | None:
    """Why the inbounds do not fit the token's tags, or None if they do.

    Every tag of the token must be on at least one inbound, and every value the inbounds give it
    must be one the token allows: a token for `kuma.io/service: [web]` cannot register a
    Dataplane that also serves `backend`.
    """
    inbounds = list(inbound_tags)
    for tag, allowed in token_tags.items():
        present = {tags[tag] for tags in inbounds if tag in tags}
        if not present:
            return f"the dataplane has no inbound with tag {tag!r}"
        extra = sorted(present - set(allowed))
        if extra:
            return f"tag {tag!r} value(s) {extra} are not among those the token allows {sorted(allowed)}"
    return None


def allowed_services(token: VerifiedToken | None, dataplane: Dataplane) -> list[str]:
    """The Dataplane's services the token proves (all of them when there is no token check)."""
    services = dataplane.services
    if token is None or SERVICE_TAG not in token.tags:
        return services
    return [service for service in services if service in token.tags[SERVICE_TAG]]


# A real token is well under 2 KiB (claims, a few tags, an RS256 signature); a bound keeps an
# unauthenticated client from making us decode megabytes.
MAX_TOKEN_CHARS = 16 * 1024

# A proxy presents the same token at every bootstrap, CSR and stream: parsing and signature
# checks are pure functions of (token, key), so their results are cached (pyjwt's base64 checks
# cost more than the RSA verification). Only tokens whose signature verified enter the cache, and
# it is a bounded LRU: what a client without a valid token sends is never kept. Expiry,
# revocation and the Dataplane are checked every time.
_CACHE_SIZE = 4096


@dataclass(frozen=True)
class _Signed:
    kid: str
    mesh: str
    key_data: str  # the stored key it verified with: a replaced or removed key is never trusted
    claims: dict[str, Any]


class VerifiedTokenCache:
    """token → the claims its signature proved; least recently used first out. Thread-safe."""

    def __init__(self, max_entries: int = _CACHE_SIZE) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, _Signed] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, token: str) -> _Signed | None:
        with self._lock:
            entry = self._items.get(token)
            if entry is not None:
                self._items.move_to_end(token)
            return entry

    def put(self, token: str, entry: _Signed) -> None:
        with self._lock:
            self._items[token] = entry
            self._items.move_to_end(token)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


VERIFIED_TOKENS = VerifiedTokenCache()


def _signed_claims(store: ResourceStore, token: str) -> tuple[str, str, dict[str, Any]]:
    """(kid, mesh, claims) of a token whose signature verifies with its mesh's stored key."""
    cached = VERIFIED_TOKENS.get(token)
    if cached is not None and stored_key_data(store, cached.mesh, cached.kid) == cached.key_data:
        return cached.kid, cached.mesh, cached.claims
    kid, claimed = _unverified(token)
    mesh = claimed.get("Mesh")
    if not isinstance(mesh, str) or not mesh:
        raise TokenRejected("malformed", "the token has no Mesh claim")
    key_data = stored_key_data(store, mesh, kid)
    if key_data is None:
        raise TokenRejected("unknown key", f"mesh {mesh!r} has no signing key with kid {kid!r}")
    claims = _verified_claims(token, key_data)
    if claims.get("Mesh") != mesh:  # cannot differ (same payload), but the cache must not lie
        raise TokenRejected("malformed", "the token has no Mesh claim")
    VERIFIED_TOKENS.put(token, _Signed(kid, mesh, key_data, claims))
    return kid, mesh, claims


def _unverified(token: str) -> tuple[str, dict[str, Any]]:
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise TokenRejected("malformed", "not a JWT") from None
    if header.get("alg") != ALGORITHM:
        raise TokenRejected("malformed", f"algorithm {header.get('alg')!r} is not {ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenRejected("malformed", "the token header has no kid")
    return kid, claims


def _verified_claims(token: str, key_data: str) -> dict[str, Any]:
    """The claims if the signature verifies with the stored key `key_data`."""
    # Time claims are checked by _check_time (one clock, testable); pyjwt checks the signature.
    options = {"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False}
    try:
        return jwt.decode(token, public_key_of(key_data), algorithms=[ALGORITHM], options=options)
    except jwt.InvalidSignatureError:
        raise TokenRejected("bad signature", "the signature does not match the mesh key") from None
    except jwt.InvalidTokenError as exc:
        raise TokenRejected("malformed", type(exc).__name__) from None


def _parse_claims(claims: dict[str, Any], kid: str) -> VerifiedToken:
    if claims.get("Type") != TOKEN_TYPE:
        raise TokenRejected("malformed", f"token type {claims.get('Type')!r} is not {TOKEN_TYPE!r}")
    name, jti, exp = claims.get("Name", ""), claims.get("jti"), claims.get("exp")
    tags = claims.get("Tags") or {}
    if not isinstance(name, str) or not isinstance(jti, str) or not jti:
        raise TokenRejected("malformed", "Name or jti is not a string")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise TokenRejected("malformed", "the token has no exp")
    if not isinstance(tags, dict) or not all(
        isinstance(values, list) and all(isinstance(v, str) for v in values) for values in tags.values()
    ):
        raise TokenRejected("malformed", "Tags is not a map of lists of strings")
    # A copy: the claims are cached and shared between requests.
    return VerifiedToken(name, claims["Mesh"], {k: list(v) for k, v in tags.items()}, jti, kid, exp)


def _check_time(claims: dict[str, Any], now: float) -> None:
    if now > claims["exp"] + LEEWAY_S:
        raise TokenRejected("expired", f"expired at {claims['exp']}")
    nbf = claims.get("nbf")
    if nbf is None:
        return
    if not isinstance(nbf, int | float) or isinstance(nbf, bool):
        raise TokenRejected("malformed", "nbf is not a number")
    if now < nbf - LEEWAY_S:
        raise TokenRejected("not yet valid", f"not valid before {nbf}")
