"""Signing a workload certificate (pure apart from the random serial).

Exactly one URI SAN `spiffe://<mesh>/<service>` per service, subject CN = the first service, key
usage fixed here (never from the CSR), back-dated 10 s for clocks a little behind ours.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.ca.authority import MeshCa
from kuma_common.dp_contract import spiffe_id

BACKDATE = dt.timedelta(seconds=10)
MAX_CN_LENGTH = 64

_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


def sign_workload_certificate(
    ca: MeshCa,
    public_key: CertificateIssuerPublicKeyTypes,
    services: Sequence[str],
    lifetime: dt.timedelta,
    now: dt.datetime,
) -> x509.Certificate:
    if not services:
        raise ValueError("a workload certificate needs at least one service")
    not_after = min(now + lifetime, ca.cert.not_valid_after_utc)
    sans = [x509.UniformResourceIdentifier(spiffe_id(ca.mesh, service)) for service in services]
    # A CN is at most 64 characters; without one the subject is empty and the SAN critical (RFC 5280).
    fits = len(services[0]) <= MAX_CN_LENGTH
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, services[0])] if fits else []
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(_LEAF_EKU, critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=not fits)
        .add_extension(ca.authority_key_id, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
