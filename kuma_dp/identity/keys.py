"""The key and the CSR (with `cryptography`). Run in a short-lived child (`keygen`), so the agent
itself never loads the crypto library: it would add ~10 MiB to the agent's resident memory."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key; it never leaves this host."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def build_csr(key: ec.EllipticCurvePrivateKey, uris: Iterable[str]) -> bytes:
    """A PEM PKCS#10 request with only URI SANs and an empty subject: the CA decides everything else."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    names = [x509.UniformResourceIdentifier(uri) for uri in uris]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
