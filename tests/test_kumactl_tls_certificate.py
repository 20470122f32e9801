"""`kumactl generate tls-certificate`: the control plane's TLS pair with the lab address as a SAN."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

KUMACTL = str(Path(sys.executable).parent / "kumactl")


def kumactl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [KUMACTL, "generate", "tls-certificate", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd)


def test_server_certificate_has_every_hostname_and_a_private_key(tmp_path: Path) -> None:
    cert, key = tmp_path / "cp.crt", tmp_path / "cp.key"
    res = kumactl(
        "--type=server", "--hostname=10.213.0.10", "--hostname", "localhost", "--hostname=::1",
        "--cert-file", str(cert), "--key-file", str(key),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.213.0.10"),
        ipaddress.ip_address("::1"),
    ]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    private = load_pem_private_key(key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key() == parsed.public_key()
    assert parsed.issuer == parsed.subject  # self-signed: agents trust it as --ca-cert-file


def test_default_file_names_and_stdout(tmp_path: Path) -> None:
    res = kumactl("--type=server", "--hostname=localhost", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "key.pem"]
    res = kumactl("--type=server", "--hostname=localhost", "--cert-file=-", "--key-file", str(tmp_path / "k"))
    assert res.stdout.startswith("-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--type=server"], "--hostname: at least one is required"),
        (["--type=server", "--hostname=bad name"], "--hostname 'bad name': not an IP address or a DNS name"),
        (["--type=client", "--hostname=x"], "--type client: not supported"),
        (["--hostname=x"], "Missing option '--type'"),
        (["--type=server", "--hostname=x", "--key-file=/nonexistent/dir/k"], "--key-file /nonexistent/dir/k"),
    ],
)
def test_bad_input_is_one_message_and_exit_nonzero(tmp_path: Path, args: list[str], message: str) -> None:
    res = kumactl(*args, cwd=tmp_path)
    assert res.returncode != 0
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "key.pem").exists()
