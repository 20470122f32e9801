"""The identity files in the work dir and Envoy's file-based SDS documents (docs/identity.md).

Each file is written as a new `.<name>.<random>.tmp` beside its final name (O_EXCL|O_NOFOLLOW),
fsynced, then renamed over the old one: Envoy watches the directory and must only ever see
complete files.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuma_common import dp_contract as contract
from kuma_dp import constants as c
from kuma_dp.errors import AgentError
from kuma_dp.workdir import check_private_dir, fsync_directory, stage_private_file, write_private_file

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


class IdentityFilesError(AgentError):
    """What the control plane sent cannot be installed (the leaf is not for our key, bad PEM)."""


@dataclass(frozen=True)
class IdentityPaths:
    directory: Path  # <workdir>/identity
    key: Path
    certificate: Path
    sds_directory: Path
    identity_secret: Path
    ca_secret: Path

    @classmethod
    def in_workdir(cls, workdir: Path) -> IdentityPaths:
        directory = workdir / contract.IDENTITY_DIR
        sds = workdir / contract.SDS_DIR
        return cls(
            directory=directory,
            key=directory / c.IDENTITY_KEY_FILE_NAME,
            certificate=directory / c.IDENTITY_CERTIFICATE_FILE_NAME,
            sds_directory=sds,
            identity_secret=sds / contract.IDENTITY_FILE,
            ca_secret=sds / contract.MESH_CA_FILE,
        )


def _document(secret: dict[str, Any]) -> bytes:
    # JSON is YAML: no quoting question can arise with multi-line PEM strings.
    return (json.dumps({"resources": [{"@type": SECRET_TYPE, **secret}]}, indent=2) + "\n").encode()


def identity_secret_yaml(certificate_chain_pem: str, key_pem: str) -> bytes:
    return _document(
        {
            "name": contract.IDENTITY_SECRET,
            "tls_certificate": {
                "certificate_chain": {"inline_string": certificate_chain_pem},
                "private_key": {"inline_string": key_pem},
            },
        }
    )


def ca_secret_yaml(ca_bundle_pem: str) -> bytes:
    return _document(
        {
            "name": contract.MESH_CA_SECRET,
            "validation_context": {"trusted_ca": {"inline_string": ca_bundle_pem}},
        }
    )


def _stage(path: Path, data: bytes, mode: int = c.IDENTITY_FILE_MODE) -> Path:
    """A new, uniquely named file beside `path` (O_EXCL|O_NOFOLLOW), owner-only and fsynced."""
    return stage_private_file(path, data, mode)


def write_atomically(path: Path, data: bytes, mode: int = c.IDENTITY_FILE_MODE) -> None:
    """Replace `path` by a complete, fsynced file readable by the owner only."""
    write_private_file(path, data, mode)


def prepare_directories(paths: IdentityPaths) -> None:
    for directory in (paths.directory, paths.sds_directory):
        directory.mkdir(mode=c.IDENTITY_DIR_MODE, exist_ok=True)
        check_private_dir(directory, "identity directory")  # never chmod through a planted symlink
        directory.chmod(c.IDENTITY_DIR_MODE)


def check_pair(certificate_file: Path, key_file: Path, ca_bundle_pem: str) -> None:
    """IdentityFilesError unless the leaf is PEM and matches the key and the CA bundle is PEM."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certificate_file, key_file)
    except ssl.SSLError as exc:
        raise IdentityFilesError(f"the certificate does not match the key sent in the CSR ({exc})") from None
    try:
        ssl.create_default_context(cadata=ca_bundle_pem)
    except ssl.SSLError as exc:
        raise IdentityFilesError(f"the CA bundle is not PEM certificates ({exc})") from None


def write_identity(paths: IdentityPaths, key_pem: bytes, certificate_pem: str, ca_bundle_pem: str) -> None:
    """Stage every file, check the pair, then rename: key, then the CA (a new leaf is never offered
    before its CA is trusted), then the identity secret that Envoy serves."""
    prepare_directories(paths)
    key_tmp = _stage(paths.key, key_pem)
    staged: list[tuple[Path, Path]] = [(key_tmp, paths.key)]
    try:
        certificate_tmp = _stage(paths.certificate, certificate_pem.encode())
        staged.append((certificate_tmp, paths.certificate))
        check_pair(certificate_tmp, key_tmp, ca_bundle_pem)
        staged.append((_stage(paths.ca_secret, ca_secret_yaml(ca_bundle_pem)), paths.ca_secret))
        identity = identity_secret_yaml(certificate_pem, key_pem.decode())
        staged.append((_stage(paths.identity_secret, identity), paths.identity_secret))
    except BaseException:
        for tmp, _final in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    fsync_directory(paths.directory)
    fsync_directory(paths.sds_directory)
