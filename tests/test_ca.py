"""The mesh CA: what a CSR may ask for, what is signed, lifetime from the Mesh, persistence."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from control_plane.ca import (
    CsrForbidden,
    CsrInvalid,
    certificate_lifetime,
    get_or_create_mesh_ca,
    issue_certificate,
    mesh_ca_key,
)
from control_plane.ca.csr import san_refusals
from control_plane.resources.mesh import Mesh
from control_plane.store.base import mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.store.sqlite import SqliteStore

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
MTLS_30S = {
    "mtls": {
        "enabledBackend": "ca-1",
        "backends": [{"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": "30s"}}}],
    }
}


def csr_pem(
    *names: x509.GeneralName,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    ca: bool | None = None,
    key_usage: x509.KeyUsage | None = None,
) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything")])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def uri(value: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(value)


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    return store


def sans(pem: str) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )


@pytest.mark.parametrize(
    ("names", "ca", "expected"),
    [
        (
            [uri("spiffe://default/web"), uri("spiffe://default/web/extra")],
            None,
            "identity of another service",
        ),
        ([uri("kuma://kuma.io/zone/eu")], None, "an extra URI SAN (kuma://kuma.io/zone/eu)"),
        ([uri("spiffe://other/web")], None, "an extra URI SAN (spiffe://other/web)"),
        ([x509.DNSName("web.local")], None, "a DNS SAN (web.local)"),
        ([x509.IPAddress(ipaddress.ip_address("10.0.0.1"))], None, "an IP SAN (10.0.0.1)"),
        ([x509.RFC822Name("a@b.c")], None, "an email SAN (a@b.c)"),
        (
            [uri("spiffe://default/backend")],
            None,
            "the identity of another service (spiffe://default/backend)",
        ),
        ([], True, "the CA flag (CA:true)"),
    ],
)
def test_csr_asking_for_more_than_the_token_proves_is_refused(
    store: MemoryStore, names: list[x509.GeneralName], ca: bool | None, expected: str
) -> None:
    with pytest.raises(CsrForbidden) as caught:
        issue_certificate(store, "default", ["web"], csr_pem(*names, ca=ca))
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "names",
    [[], [uri("spiffe://default/web")], [uri("spiffe://default/api"), uri("spiffe://default/web")]],
    ids=["none", "subset", "all"],
)
def test_subset_or_none_gets_exactly_the_allowed_uris(
    store: MemoryStore, names: list[x509.GeneralName]
) -> None:
    issued = issue_certificate(store, "default", ["web", "api"], csr_pem(*names), now=NOW)
    assert sans(issued.certificate_pem) == ["spiffe://default/web", "spiffe://default/api"]
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web"
    assert len(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == 2


def test_key_usage_is_fixed_by_the_ca_and_the_chain_verifies(store: MemoryStore) -> None:
    everything = x509.KeyUsage(True, True, True, True, True, True, True, False, False)
    issued = issue_certificate(store, "default", ["web"], csr_pem(key_usage=everything, ca=False), now=NOW)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign and not usage.value.content_commitment
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    ca_cert = x509.load_pem_x509_certificate(issued.ca_pem.encode())
    cert.verify_directly_issued_by(ca_cert)
    assert format(cert.serial_number, "x") == issued.response()["serial"]


def test_back_dated_ten_seconds_and_lifetime_from_the_mesh(store: MemoryStore) -> None:
    issued = issue_certificate(store, "default", ["web"], csr_pem(), now=NOW)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert cert.not_valid_before_utc == NOW - dt.timedelta(seconds=10)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(hours=24)  # no mTLS backend: 24 h
    store.upsert(mesh_key("default"), MTLS_30S)
    issued = issue_certificate(store, "default", ["web"], csr_pem(), now=NOW)
    assert issued.not_after == NOW + dt.timedelta(seconds=30)
    assert issued.response()["notAfter"] == "2026-01-02T03:04:35Z"


def test_lifetime_rules() -> None:
    def mesh(spec: dict) -> Mesh:
        return Mesh.model_validate({"type": "Mesh", "name": "m", **spec})

    assert certificate_lifetime(None) == dt.timedelta(hours=24)
    assert certificate_lifetime(mesh(MTLS_30S)) == dt.timedelta(seconds=30)
    disabled = {"mtls": {"backends": MTLS_30S["mtls"]["backends"]}}
    assert certificate_lifetime(mesh(disabled)) == dt.timedelta(hours=24)
    broken = {
        "mtls": {
            "enabledBackend": "b",
            "backends": [{"name": "b", "dpCert": {"rotation": {"expiration": "x"}}}],
        }
    }
    # A bad duration never reaches the CA: the Mesh is refused, naming the field.
    with pytest.raises(ValueError, match="dpCert.rotation.expiration"):
        mesh(broken)


@pytest.mark.parametrize(
    ("pem", "expected"),
    [
        ("not a csr", "not a PEM-encoded PKCS#10"),
        (csr_pem(key=ec.generate_private_key(ec.SECP384R1())), "use P-256"),
        (csr_pem(key=rsa.generate_private_key(65537, 1024)), "RSA 1024 bits"),
    ],
)
def test_unusable_csrs_are_invalid(store: MemoryStore, pem: str, expected: str) -> None:
    with pytest.raises(CsrInvalid) as caught:
        issue_certificate(store, "default", ["web"], pem)
    assert expected in str(caught.value)


def test_a_csr_whose_signature_does_not_verify_is_invalid(store: MemoryStore) -> None:
    good = x509.load_pem_x509_csr(csr_pem().encode()).public_bytes(serialization.Encoding.DER)
    tampered = bytearray(good)
    tampered[-5] ^= 0xFF  # inside the signature
    pem = x509.load_der_x509_csr(bytes(tampered)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(CsrInvalid):
        issue_certificate(store, "default", ["web"], pem)


def test_rsa_2048_csrs_are_accepted(store: MemoryStore) -> None:
    issued = issue_certificate(store, "default", ["web"], csr_pem(key=rsa.generate_private_key(65537, 2048)))
    assert sans(issued.certificate_pem) == ["spiffe://default/web"]


def test_the_ca_is_persisted_and_reused_after_a_restart(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "kuma.db")
    first.upsert(mesh_key("default"), {})
    issued = issue_certificate(first, "default", ["web"], csr_pem())
    ca = get_or_create_mesh_ca(first, "default")
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc > dt.timedelta(days=3649)
    first.close()
    second = SqliteStore(tmp_path / "kuma.db")
    try:
        assert get_or_create_mesh_ca(second, "default").cert_pem == issued.ca_pem
        again = issue_certificate(second, "default", ["web"], csr_pem())
        assert again.ca_pem == issued.ca_pem
        stored = second.get(mesh_ca_key("default"))
        assert stored is not None and set(stored.spec) == {"cert", "key"}
    finally:
        second.close()


_services = st.text(alphabet="abcdefgh-", min_size=1, max_size=6)


@given(
    allowed=st.sets(_services, min_size=1, max_size=3),
    asked=st.lists(
        st.one_of(
            _services.map(lambda s: uri(f"spiffe://default/{s}")),
            _services.map(lambda s: uri(f"spiffe://other/{s}")),
            _services.map(lambda s: x509.DNSName(f"{s}.example")),
        ),
        max_size=4,
    ),
)
def test_san_checker_accepts_exactly_subsets_of_the_allowed_uris(
    allowed: set[str], asked: list[x509.GeneralName]
) -> None:
    allowed_uris = {f"spiffe://default/{s}" for s in allowed}
    refused = san_refusals(asked, allowed_uris, "default")
    acceptable = all(isinstance(n, x509.UniformResourceIdentifier) and n.value in allowed_uris for n in asked)
    assert (refused == []) == acceptable
    assert len(refused) == sum(
        1 for n in asked if not (isinstance(n, x509.UniformResourceIdentifier) and n.value in allowed_uris)
    )
