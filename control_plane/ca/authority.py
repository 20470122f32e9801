"""The built-in CA of a mesh: ECDSA P-256, self-signed, 10 years, persisted in the store.

`ResourceKey("Secret", <mesh>, "mesh-ca")`, spec `{"cert": <base64 PEM>, "key": <base64 PEM>}`;
created on first need and reused after a restart, so certificates issued before stay trusted.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from control_plane.store.base import ConflictError, ResourceKey, ResourceStore

CA_SECRET_NAME = "mesh-ca"
CA_VALIDITY = dt.timedelta(days=3650)
CA_BACKDATE = dt.timedelta(minutes=5)
ORGANIZATION = "kuma-py"


@dataclass(frozen=True)
class MeshCa:
    mesh: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_pem: str  # the CA bundle given to proxies
    authority_key_id: x509.AuthorityKeyIdentifier


def mesh_ca_key(mesh: str) -> ResourceKey:
    return ResourceKey("Secret", mesh, CA_SECRET_NAME)


def spiffe_mesh_uri(mesh: str) -> str:
    return f"spiffe://{mesh}"


def get_or_create_mesh_ca(store: ResourceStore, mesh: str) -> MeshCa:
    stored = store.get(mesh_ca_key(mesh))
    if stored is None:
        cert_pem, key_pem = new_ca_pem(mesh)
        spec = {"cert": _b64(cert_pem), "key": _b64(key_pem)}
        try:
            store.upsert(mesh_ca_key(mesh), spec, expected_version=0)  # first writer wins a race
        except ConflictError:
            return get_or_create_mesh_ca(store, mesh)
        return _load(mesh, spec["cert"], spec["key"])
    return _load(mesh, stored.spec["cert"], stored.spec["key"])


def new_ca_pem(mesh: str, now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A fresh self-signed CA certificate and its key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or dt.datetime.now(dt.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"mesh {mesh} CA"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_mesh_uri(mesh))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


@functools.lru_cache(maxsize=64)
def _load(mesh: str, cert_b64: str, key_b64: str) -> MeshCa:
    # Cached by the stored text: parsing on every CSR would cost more than the signature.
    cert_pem = base64.b64decode(cert_b64)
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(base64.b64decode(key_b64), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"the stored CA key of mesh {mesh!r} is not an ECDSA key")
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    return MeshCa(mesh, cert, key, cert_pem.decode(), aki)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
