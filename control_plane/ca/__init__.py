"""The built-in mesh CA: persisted per mesh, signs workload certificates from checked CSRs."""

from control_plane.ca.authority import MeshCa, get_or_create_mesh_ca, mesh_ca_key
from control_plane.ca.csr import CsrForbidden, CsrInvalid, check_csr, csr_refusals, parse_csr
from control_plane.ca.issue import IssuedCertificate, certificate_lifetime, issue_certificate
from control_plane.ca.signing import sign_workload_certificate

__all__ = [
    "CsrForbidden",
    "CsrInvalid",
    "IssuedCertificate",
    "MeshCa",
    "certificate_lifetime",
    "check_csr",
    "csr_refusals",
    "get_or_create_mesh_ca",
    "issue_certificate",
    "mesh_ca_key",
    "parse_csr",
    "sign_workload_certificate",
]
