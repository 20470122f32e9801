"""CSR in, workload certificate out: the mesh's lifetime, the SAN rules and the persisted CA."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from control_plane.ca.authority import get_or_create_mesh_ca
from control_plane.ca.csr import check_csr, parse_csr
from control_plane.ca.signing import sign_workload_certificate
from control_plane.resources.mesh import DEFAULT_CERT_LIFETIME_S, Mesh
from control_plane.store.base import ResourceStore, mesh_key
from kuma_common import dp_contract as contract
from kuma_common.dp_contract import spiffe_id

log = logging.getLogger("kuma-cp.ca")

DEFAULT_LIFETIME = dt.timedelta(seconds=DEFAULT_CERT_LIFETIME_S)


@dataclass(frozen=True)
class IssuedCertificate:
    certificate_pem: str
    ca_pem: str
    not_after: dt.datetime
    serial: int

    def response(self) -> dict[str, str]:
        """The body of `POST /certificate` (docs/identity.md)."""
        return {
            contract.CERTIFICATE_FIELD: self.certificate_pem,
            contract.CA_BUNDLE_FIELD: self.ca_pem,
            contract.NOT_AFTER_FIELD: self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            contract.SERIAL_FIELD: format(self.serial, "x"),
        }


def certificate_lifetime(mesh: Mesh | None) -> dt.timedelta:
    """The enabled mTLS backend's `dpCert.rotation.expiration` (validated with the Mesh), or 24 h."""
    if mesh is None or mesh.mtls is None:
        return DEFAULT_LIFETIME
    return dt.timedelta(seconds=mesh.mtls.certificate_lifetime_s())


def mesh_lifetime(store: ResourceStore, mesh: str) -> dt.timedelta:
    stored = store.get(mesh_key(mesh))
    return certificate_lifetime(None if stored is None else Mesh.model_validate(stored.document()))


def issue_certificate(
    store: ResourceStore,
    mesh: str,
    services: Sequence[str],
    csr_pem: str,
    now: dt.datetime | None = None,
) -> IssuedCertificate:
    """Check the CSR against the allowed services and sign; CsrInvalid / CsrForbidden otherwise."""
    csr = parse_csr(csr_pem)
    check_csr(csr, [spiffe_id(mesh, service) for service in services], mesh)
    ca = get_or_create_mesh_ca(store, mesh)
    now = now or dt.datetime.now(dt.UTC)
    cert = sign_workload_certificate(ca, csr.public_key(), services, mesh_lifetime(store, mesh), now)
    return IssuedCertificate(
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        ca_pem=ca.cert_pem,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
    )
