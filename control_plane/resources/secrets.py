"""Secret (per mesh) and GlobalSecret as resources: exactly the shapes the control plane stores.

Kuma's Secret is `data: <base64>`, and so is every secret here except the mesh CA:

- `mesh-ca` (Secret): `cert` and `key`, base64 PEM of the mesh's CA certificate and its ECDSA
  P-256 key, which must belong together (control_plane/ca/authority.py);
- `dataplane-token-signing-key-<serial>` (Secret) and `user-token-signing-key-<serial>`
  (GlobalSecret): `data`, base64 PEM of an RSA private key (control_plane/tokens/);
- `dataplane-token-revocations-<mesh>` (Secret): `data`, base64 of comma-separated token ids;
- any other name: `data`, any base64 (a user's secret, as in Kuma).

A document with another shape is refused with the field named, so that a bad apply cannot leave
the control plane a secret it would fail on later (at the next CSR or token check). Messages never
quote a secret's value.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import model_validator

from control_plane.ca.authority import CA_SECRET_NAME
from control_plane.resources.common import MeshScopedResource, NamedResource
from control_plane.tokens.keys import SIGNING_KEY_PREFIX as DP_SIGNING_KEY_PREFIX
from control_plane.tokens.revocation import REVOCATIONS_PREFIX
from control_plane.tokens.user import ADMIN_USER_TOKEN
from control_plane.tokens.user import SIGNING_KEY_PREFIX as USER_SIGNING_KEY_PREFIX

_SERIAL = re.compile(r"[0-9]{1,18}")
_JTI = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class SecretShapeError(ValueError):
    """`field: message`, the form the resource errors move into the field path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")


def decode_base64(field: str, value: str | None) -> bytes:
    if value is None:
        raise SecretShapeError(field, "field is required")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SecretShapeError(field, "is not base64") from None


def check_rsa_key(field: str, value: str | None) -> None:
    pem = decode_base64(field, value)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SecretShapeError(field, "is not the base64 of an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SecretShapeError(field, "is not an RSA private key (tokens are signed with RS256)")


def check_mesh_ca(cert_b64: str | None, key_b64: str | None) -> None:
    """A CA certificate and the ECDSA P-256 key of its public key, as the built-in CA stores them."""
    pem = decode_base64("cert", cert_b64)
    try:
        cert = x509.load_pem_x509_certificate(pem)
        cert_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise SecretShapeError("cert", "is not the base64 of a PEM certificate") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):  # ValueError: a malformed extension
        constraints = None
    if constraints is None or not constraints.ca:
        raise SecretShapeError("cert", "is not a CA certificate (basicConstraints CA:TRUE)")
    key_pem = decode_base64("key", key_b64)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SecretShapeError("key", "is not the base64 of an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SecretShapeError("key", "is not an ECDSA P-256 key (the built-in CA's key type)")
    if key.public_key() != cert_key:
        raise SecretShapeError("key", "is not the key of the certificate in cert")


def check_revocations(value: str | None) -> None:
    text = decode_base64("data", value)
    try:
        ids = [jti.strip() for jti in text.decode("ascii").split(",") if jti.strip()]
    except UnicodeDecodeError:
        raise SecretShapeError("data", "is not a comma-separated list of token ids") from None
    if not all(_JTI.fullmatch(jti) for jti in ids):
        raise SecretShapeError("data", "is not a comma-separated list of token ids")


def check_serial_name(name: str, prefix: str) -> None:
    if not _SERIAL.fullmatch(name.removeprefix(prefix)):
        raise SecretShapeError("name", f"a signing key is named {prefix}<serial>, the serial in digits")


class Secret(MeshScopedResource):
    type: Literal["Secret"] = "Secret"
    data: str | None = None
    cert: str | None = None  # mesh-ca only
    key: str | None = None  # mesh-ca only

    @model_validator(mode="after")
    def _shape(self) -> Secret:
        if self.name == CA_SECRET_NAME:
            if self.data is not None:
                raise SecretShapeError("data", "the mesh CA has cert and key, not data")
            check_mesh_ca(self.cert, self.key)
            return self
        for field in ("cert", "key"):
            if getattr(self, field) is not None:
                raise SecretShapeError(field, f"unknown field (only {CA_SECRET_NAME} has cert and key)")
        if self.name.startswith(DP_SIGNING_KEY_PREFIX):
            check_serial_name(self.name, DP_SIGNING_KEY_PREFIX)
            check_rsa_key("data", self.data)
        elif self.name.startswith(REVOCATIONS_PREFIX):
            if self.name != REVOCATIONS_PREFIX + self.mesh:
                raise SecretShapeError(
                    "name", f"the revocations of mesh {self.mesh!r} are {REVOCATIONS_PREFIX}{self.mesh}"
                )
            check_revocations(self.data)
        else:
            decode_base64("data", self.data)
        return self


class GlobalSecret(NamedResource):
    type: Literal["GlobalSecret"] = "GlobalSecret"
    data: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> GlobalSecret:
        if self.name.startswith(USER_SIGNING_KEY_PREFIX):
            check_serial_name(self.name, USER_SIGNING_KEY_PREFIX)
            check_rsa_key("data", self.data)
        elif self.name == ADMIN_USER_TOKEN:
            token = decode_base64("data", self.data)
            if token.count(b".") != 2:
                raise SecretShapeError("data", "is not the base64 of a user token (a JWT)")
        else:
            decode_base64("data", self.data)
        return self
