"""`kumactl generate tls-certificate`: Kuma's command for the control plane's own TLS pair.

    kumactl generate tls-certificate --type=server --hostname=10.0.0.2 --hostname=localhost \
        --cert-file cp.crt --key-file cp.key

The certificate is self-signed (it is its own trust anchor: agents pass it as `--ca-cert-file`)
and carries every `--hostname` as a SAN (an IP address as an IP SAN, anything else as DNS).
Only `server` is made here: the control plane's DP server is the one TLS server of the mesh that
is not issued by a mesh CA. `-` writes to stdout, as in Kuma.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import click

from control_plane.dp_server.tls import self_signed_pem
from control_plane.kumactl.errors import KumactlError

CERT_TYPES = ("server", "client")


@click.command("tls-certificate")
@click.option(
    "--type", "cert_type", type=click.Choice(CERT_TYPES), required=True, help="type of the certificate"
)
@click.option(
    "--hostname",
    "hostnames",
    multiple=True,
    help="DNS name or IP address to issue the certificate for (repeatable)",
)
@click.option(
    "--cert-file",
    default="cert.pem",
    show_default=True,
    help="where to write the certificate ('-' for stdout)",
)
@click.option(
    "--key-file", default="key.pem", show_default=True, help="where to write the private key ('-' for stdout)"
)
def tls_certificate(cert_type: str, hostnames: tuple[str, ...], cert_file: str, key_file: str) -> None:
    """Generate a self-signed TLS certificate and its key (the key is written 0600)."""
    if cert_type != "server":
        raise KumactlError(
            "--type client: not supported; only --type=server (the control plane's certificate)"
        )
    names = [_checked_hostname(h) for h in hostnames]
    if not names:
        raise KumactlError("--hostname: at least one is required for a server certificate")
    cert_pem, key_pem = self_signed_pem(list(dict.fromkeys(names)))
    _write(key_file, key_pem, 0o600, "--key-file")
    _write(cert_file, cert_pem, 0o644, "--cert-file")


def _checked_hostname(name: str) -> str:
    name = name.strip()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    valid = name and all(0 < len(x) <= 63 and x.replace("-", "").replace("*", "").isalnum() for x in labels)
    if not valid:
        raise KumactlError(f"--hostname {name!r}: not an IP address or a DNS name")
    return name


def _write(target: str, data: bytes, mode: int, flag: str) -> None:
    """Create the file with its final mode from the start (a key is never readable by others)."""
    if target == "-":
        click.echo(data.decode(), nl=False)
        return
    path = Path(target)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        raise KumactlError(f"{flag} {target}: cannot write: {exc.strerror}") from None
