"""Per-mesh token signing keys, kept in the store as Kuma keeps them.

`ResourceKey("Secret", <mesh>, "dataplane-token-signing-key-<serial>")`, spec `{"data": <base64
PKCS#8 PEM>}`; the JWT header `kid` is the serial. The newest serial signs; every stored serial
verifies, so a rotation keeps old tokens valid until their key is deleted.
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from control_plane.store.base import ConflictError, ResourceKey, ResourceStore

SECRET_TYPE = "Secret"
SIGNING_KEY_PREFIX = "dataplane-token-signing-key-"
RSA_KEY_BITS = 2048


class SigningKeyError(ValueError):
    """A signing key that cannot be used (offline signing); the message names the input."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey


def kid_serial(kid: str) -> int | None:
    """The serial a `kid` names, or None: only ASCII digits (`str.isdigit` also accepts `²`, which
    `int` refuses), and a bounded length, since a kid comes from an unverified token."""
    return int(kid) if _KID.fullmatch(kid) else None


_KID = re.compile(r"[0-9]{1,18}")


def signing_key_key(mesh: str, serial: int) -> ResourceKey:
    return ResourceKey(SECRET_TYPE, mesh, f"{SIGNING_KEY_PREFIX}{serial}")


def new_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key_pem(pem: bytes) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM (PKCS#8 or PKCS#1); SigningKeyError if it is not one."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError("is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningKeyError("is not an RSA private key (tokens are signed with RS256)")
    return key


@functools.lru_cache(maxsize=256)
def _load_stored(data: str) -> rsa.RSAPrivateKey:
    # Parsing a PEM RSA key costs milliseconds; verification runs on every bootstrap, CSR and
    # stream, so parsed keys are cached by their stored text.
    return load_private_key_pem(base64.b64decode(data))


def serials(store: ResourceStore, mesh: str) -> list[int]:
    """The serials of the mesh's signing keys, oldest first."""
    return stored_serials(store, SECRET_TYPE, mesh, SIGNING_KEY_PREFIX)


def stored_serials(store: ResourceStore, secret_type: str, mesh: str | None, prefix: str) -> list[int]:
    """The serials N of the stored secrets named `<prefix>N` (signing keys), oldest first."""
    items, _ = store.list(secret_type, mesh)
    found = []
    for item in items:
        suffix = item.key.name.removeprefix(prefix)
        if suffix != item.key.name and suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)


def stored_key_data(store: ResourceStore, mesh: str, kid: str) -> str | None:
    """The stored form (base64 PEM) of the key with this `kid` in this mesh, or None."""
    serial = kid_serial(kid)
    if serial is None:
        return None
    stored = store.get(signing_key_key(mesh, serial))
    return None if stored is None else stored.spec["data"]


def public_key_of(data: str) -> rsa.RSAPublicKey:
    """The verifying key of a stored signing key."""
    return _load_stored(data).public_key()


def current_signing_key(store: ResourceStore, mesh: str) -> SigningKey:
    """The newest signing key of the mesh, created (serial 1) on first use."""
    existing = serials(store, mesh)
    if not existing:
        return _create(store, mesh, 1)
    serial = existing[-1]
    stored = store.get(signing_key_key(mesh, serial))
    if stored is None:  # deleted between list and get: start again
        return current_signing_key(store, mesh)
    return SigningKey(str(serial), _load_stored(stored.spec["data"]))


def rotate_signing_key(store: ResourceStore, mesh: str) -> SigningKey:
    """Add a key with the next serial; new tokens are signed with it, old ones still verify."""
    existing = serials(store, mesh)
    return _create(store, mesh, (existing[-1] if existing else 0) + 1)


def remove_signing_key(store: ResourceStore, mesh: str, kid: str) -> bool:
    """Delete a key: every token it signed stops verifying ("unknown key")."""
    serial = kid_serial(kid)
    return serial is not None and store.delete(signing_key_key(mesh, serial))


def _create(store: ResourceStore, mesh: str, serial: int) -> SigningKey:
    key = new_private_key()
    data = base64.b64encode(private_key_pem(key)).decode()
    try:
        # expected_version=0: "must not exist yet"; when two callers race, the first one wins.
        store.upsert(signing_key_key(mesh, serial), {"data": data}, expected_version=0)
    except ConflictError:
        return current_signing_key(store, mesh)
    return SigningKey(str(serial), key)
