"""Dataplane tokens: the claims (pure) and their RS256 signature (by the store's key or offline)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from control_plane.store.base import ResourceStore
from control_plane.tokens.keys import current_signing_key

ALGORITHM = "RS256"
TOKEN_TYPE = "dataplane"
DEFAULT_VALIDITY_S = 10 * 365 * 24 * 3600  # Kuma's default: 10 years (kumactl warns about it)
NOT_BEFORE_SKEW_S = 5  # nbf = now - 5 s, as Kuma: tolerate clocks a little behind ours


@dataclass(frozen=True)
class TokenRequest:
    """What a token proves: a dataplane name (optional), its mesh and the tags it may carry."""

    mesh: str
    name: str = ""
    tags: Mapping[str, Sequence[str]] = field(default_factory=dict)
    valid_for_s: float = DEFAULT_VALIDITY_S


def token_claims(request: TokenRequest, now: float, jti: str) -> dict[str, Any]:
    issued = int(now)
    claims: dict[str, Any] = {
        "Name": request.name,
        "Mesh": request.mesh,
        "Tags": {key: list(values) for key, values in request.tags.items()},
        "Type": TOKEN_TYPE,
        "jti": jti,
        "iat": issued,
        "nbf": issued - NOT_BEFORE_SKEW_S,
        "exp": issued + int(request.valid_for_s),
    }
    return claims


def sign_token(request: TokenRequest, key: rsa.RSAPrivateKey, kid: str, now: float | None = None) -> str:
    """A signed token; used by the control plane and by `kumactl generate --signing-key-path`."""
    claims = token_claims(request, time.time() if now is None else now, str(uuid.uuid4()))
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})


def issue_token(store: ResourceStore, request: TokenRequest, now: float | None = None) -> str:
    """Sign with the mesh's newest key, creating the first key if the mesh has none."""
    signing = current_signing_key(store, request.mesh)
    return sign_token(request, signing.private_key, signing.kid, now)
