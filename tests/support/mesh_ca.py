"""A mesh CA for tests that need real workload certificates on disk.

`MeshCa` (ECDSA P-256, self-signed) issues a workload certificate the way the control plane's
built-in CA does (one URI SAN `spiffe://<mesh>/<service>`, server and client auth) and writes a
proxy's identity and SDS files with the agent's own code (kuma_dp/identity/sds.py), so Envoy reads
exactly what it reads beside a real agent.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kuma_dp.identity.sds import IdentityPaths, write_identity


def _builder(subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=10))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )


class MeshCa:
    def __init__(self, mesh: str = "default") -> None:
        self.mesh = mesh
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"test CA of mesh {mesh}")])
        self.cert = (
            _builder(name, self.key.public_key())
            .issuer_name(name)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, service: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A key and its workload certificate for `service` of this mesh."""
        key = ec.generate_private_key(ec.SECP256R1())
        uri = f"spiffe://{self.mesh}/{service}"
        cert = (
            _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]), key.public_key())
            .issuer_name(self.cert.subject)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return key, cert

    def write_sds_files(self, workdir: Path, service: str) -> None:
        """The files an agent of `service` keeps in `workdir` (docs/identity.md), as it writes them."""
        key, cert = self.issue(service)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        workdir.mkdir(parents=True, exist_ok=True)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        write_identity(IdentityPaths.in_workdir(workdir), key_pem, cert_pem, self.pem)
