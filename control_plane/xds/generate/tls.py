"""mTLS between proxies: TLS contexts whose certificates Envoy reads from the agent's SDS files.

The agent keeps `<workdir>/identity/sds/{identity,ca}.yaml` (docs/identity.md); Envoy watches that
directory, so a renewed certificate is picked up without any xDS push or restart. Peers are told
apart by the URI SAN `spiffe://<mesh>/<service>` the mesh CA signed.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from control_plane.xds.generate.pack import pack
from kuma_common.dp_contract import (
    IDENTITY_FILE,
    IDENTITY_SECRET,
    MESH_CA_FILE,
    MESH_CA_SECRET,
    SDS_DIR,
    spiffe_id,
)

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
TLS_INSPECTOR_FILTER = "envoy.filters.listener.tls_inspector"
# Kuma's ALPN between proxies: lets a PERMISSIVE inbound tell a mesh peer from any other TLS client.
KUMA_ALPN = "kuma"


def sds_dir(workdir: str) -> str:
    return posixpath.join(workdir, SDS_DIR)


def sds_secret(name: str, workdir: str, file_name: str) -> secret_pb2.SdsSecretConfig:
    """A secret Envoy reads from a file and re-reads whenever the directory's files are moved."""
    directory = sds_dir(workdir)
    source = config_source_pb2.ConfigSource(
        path_config_source=config_source_pb2.PathConfigSource(
            path=posixpath.join(directory, file_name),
            watched_directory=base_pb2.WatchedDirectory(path=directory),
        ),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )
    return secret_pb2.SdsSecretConfig(name=name, sds_config=source)


def _common_context(workdir: str, peer: string_pb2.StringMatcher) -> tls_pb2.CommonTlsContext:
    peer_san = common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=peer)
    validation = tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
        default_validation_context=common_pb2.CertificateValidationContext(
            match_typed_subject_alt_names=[peer_san]
        ),
        validation_context_sds_secret_config=sds_secret(MESH_CA_SECRET, workdir, MESH_CA_FILE),
    )
    return tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[sds_secret(IDENTITY_SECRET, workdir, IDENTITY_FILE)],
        combined_validation_context=validation,
    )


def downstream_tls(
    mesh: str, workdir: str, parameters: common_pb2.TlsParameters | None = None
) -> base_pb2.TransportSocket:
    """Inbound side: a client certificate from this mesh's CA is required; any service of the mesh.
    `parameters`: TLS versions and ciphers (Envoy's defaults without)."""
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=_common_context(workdir, string_pb2.StringMatcher(prefix=spiffe_id(mesh, ""))),
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
    )
    if parameters is not None:
        context.common_tls_context.tls_params.CopyFrom(parameters)
    return _transport_socket(context)


def upstream_sni(mesh: str, service: str) -> str:
    """Kuma's SNI towards a service of the mesh: `<service>{mesh=<mesh>}`."""
    return f"{service}{{mesh={mesh}}}"


def upstream_tls(
    mesh: str, service: str, workdir: str, parameters: common_pb2.TlsParameters | None = None
) -> base_pb2.TransportSocket:
    """Outbound side: present our identity, and accept only the exact identity of `service`.
    `parameters`: TLS versions and ciphers (Envoy's defaults without)."""
    common = _common_context(workdir, string_pb2.StringMatcher(exact=spiffe_id(mesh, service)))
    common.alpn_protocols.append(KUMA_ALPN)
    if parameters is not None:
        common.tls_params.CopyFrom(parameters)
    context = tls_pb2.UpstreamTlsContext(common_tls_context=common, sni=upstream_sni(mesh, service))
    return _transport_socket(context)


def _transport_socket(context: Message) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


@dataclass(frozen=True)
class InboundMtls:
    """How the proxy's inbounds are protected: the mesh's mode and the certificates' lifetime
    (who may call is MeshTrafficPermission's business). Once policies have shaped the inbounds,
    `permissive` is whether they all are, and `tls_parameters` the TLS versions and ciphers that
    every mTLS connection of the proxy uses, outbound too (MeshTLS)."""

    mesh: str
    workdir: str
    permissive: bool = False
    certificate_lifetime_s: float = 24 * 3600.0
    tls_parameters: common_pb2.TlsParameters | None = field(default=None, compare=False)

    @property
    def max_connection_duration_s(self) -> float:
        """A pooled mTLS connection is closed after a tenth of a certificate's lifetime. Renewal
        comes at ~80 % of it, so no connection outlives the certificate it was opened with, and
        peers see rotated certificates soon (Envoy keeps pooled connections open otherwise)."""
        return self.certificate_lifetime_s / 10


def secure_chain(
    chain: listener_components_pb2.FilterChain,
    mtls: InboundMtls,
    permissive: bool,
    parameters: common_pb2.TlsParameters | None = None,
) -> None:
    """Make `chain` the mTLS chain of its listener (in PERMISSIVE, the one for mesh peers)."""
    chain.transport_socket.CopyFrom(downstream_tls(mtls.mesh, mtls.workdir, parameters))
    if permissive:
        chain.filter_chain_match.CopyFrom(
            listener_components_pb2.FilterChainMatch(
                transport_protocol="tls", application_protocols=[KUMA_ALPN]
            )
        )


def permissive_listener_filters() -> list[listener_components_pb2.ListenerFilter]:
    """TLS inspector: reads the ClientHello so filter chains can match on TLS and ALPN."""
    return [
        listener_components_pb2.ListenerFilter(
            name=TLS_INSPECTOR_FILTER, typed_config=pack(tls_inspector_pb2.TlsInspector())
        )
    ]
