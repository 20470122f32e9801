"""What a CSR may ask for (pure): a subset of the URIs the token proves, and nothing else.

One list, checked exactly (the lesson of CVE-2022-40716): every subject alternative name the CSR
carries must be one of the allowed `spiffe://<mesh>/<service>` URIs. Key usage, extended key usage
and basic constraints are set by the CA and never copied; a CSR that asks for CA:true, or carries
an extension the CA does not know, is refused. The CSR's subject is ignored (never copied).
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kuma_common.dp_contract import spiffe_id

MIN_RSA_BITS = 2048

# Extensions a CSR may carry because standard tools add them; their content is never copied.
_IGNORED_EXTENSIONS: tuple[type[x509.ExtensionType], ...] = (
    x509.KeyUsage,
    x509.ExtendedKeyUsage,
    x509.SubjectKeyIdentifier,
)


class CsrInvalid(ValueError):
    """The CSR cannot be read or verified (HTTP 422)."""


class CsrForbidden(ValueError):
    """The CSR asks for what the token does not prove (HTTP 403); `asked` lists each item."""

    def __init__(self, asked: list[str]) -> None:
        super().__init__("the CSR asks for what the token does not prove: " + "; ".join(asked))
        self.asked = asked


def parse_csr(pem: str) -> x509.CertificateSigningRequest:
    """A CSR whose signature verifies and whose key is ECDSA P-256 or RSA >= 2048."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except (ValueError, UnicodeEncodeError):
        raise CsrInvalid("csr is not a PEM-encoded PKCS#10 certificate signing request") from None
    try:
        valid = csr.is_signature_valid
        key = csr.public_key()
        _ = list(csr.extensions)  # a broken or duplicated extension raises here, not later
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CsrInvalid(f"csr cannot be read: {exc}") from None
    if not valid:
        raise CsrInvalid("csr signature does not verify")
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise CsrInvalid(f"csr key is ECDSA {key.curve.name}; use P-256 (secp256r1)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrInvalid(f"csr key is RSA {key.key_size} bits; use at least {MIN_RSA_BITS}")
    else:
        raise CsrInvalid("csr key must be ECDSA P-256 or RSA 2048+")
    return csr


def csr_refusals(csr: x509.CertificateSigningRequest, allowed_uris: Iterable[str], mesh: str) -> list[str]:
    """Everything in the CSR beyond the allowed URIs, one message each (empty: acceptable)."""
    allowed = set(allowed_uris)
    refused: list[str] = []
    for extension in csr.extensions:
        value = extension.value
        if isinstance(value, x509.SubjectAlternativeName):
            refused.extend(san_refusals(value, allowed, mesh))
        elif isinstance(value, x509.BasicConstraints):
            if value.ca:
                refused.append("the CA flag (CA:true)")
        elif not isinstance(value, _IGNORED_EXTENSIONS):
            refused.append(f"extension {extension.oid.dotted_string} ({_oid_name(extension.oid)})")
    return refused


def san_refusals(names: Iterable[x509.GeneralName], allowed: set[str], mesh: str) -> list[str]:
    refused = []
    service_prefix = spiffe_id(mesh, "")
    for name in names:
        if isinstance(name, x509.UniformResourceIdentifier):
            if name.value in allowed:
                continue
            if name.value.startswith(service_prefix):
                refused.append(f"the identity of another service ({name.value})")
            else:
                refused.append(f"an extra URI SAN ({name.value})")
        elif isinstance(name, x509.DNSName):
            refused.append(f"a DNS SAN ({name.value})")
        elif isinstance(name, x509.IPAddress):
            refused.append(f"an IP SAN ({name.value})")
        elif isinstance(name, x509.RFC822Name):
            refused.append(f"an email SAN ({name.value})")
        else:
            refused.append(f"a {type(name).__name__} SAN")
    return refused


def check_csr(csr: x509.CertificateSigningRequest, allowed_uris: Iterable[str], mesh: str) -> None:
    refused = csr_refusals(csr, allowed_uris, mesh)
    if refused:
        raise CsrForbidden(refused)


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    return getattr(oid, "_name", "unknown")
