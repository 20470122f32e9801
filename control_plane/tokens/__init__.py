"""Dataplane tokens: per-mesh signing keys, issuing, verification and revocation (docs/identity.md)."""

from control_plane.tokens.issue import DEFAULT_VALIDITY_S, TokenRequest, issue_token, sign_token
from control_plane.tokens.keys import (
    SigningKey,
    SigningKeyError,
    current_signing_key,
    load_private_key_pem,
    remove_signing_key,
    rotate_signing_key,
)
from control_plane.tokens.revocation import revoke, revoked_ids
from control_plane.tokens.verify import (
    REASONS,
    Reason,
    TokenRejected,
    VerifiedToken,
    authenticate_token,
    verify_token,
)

__all__ = [
    "DEFAULT_VALIDITY_S",
    "REASONS",
    "Reason",
    "SigningKey",
    "SigningKeyError",
    "TokenRejected",
    "TokenRequest",
    "VerifiedToken",
    "authenticate_token",
    "current_signing_key",
    "issue_token",
    "load_private_key_pem",
    "remove_signing_key",
    "revoke",
    "revoked_ids",
    "rotate_signing_key",
    "sign_token",
    "verify_token",
]
