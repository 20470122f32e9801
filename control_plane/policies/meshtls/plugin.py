"""MeshTLS → Envoy, per inbound (Kuma's mapping), only when the Mesh's mTLS is on:
- `mode` → which chains the inbound listener serves (`InboundParts.permissive`): Strict, the mTLS
  chain alone; Permissive, also the plaintext chain, behind a TLS inspector (mesh peers, who offer
  ALPN `kuma`, keep mTLS);
- `tlsVersion` → `tls_minimum_protocol_version` / `tls_maximum_protocol_version`, `tlsCiphers` →
  `cipher_suites`, of the `TlsParameters` on the inbound's DownstreamTlsContext
  (`InboundParts.tls_parameters`). The generator gives the same parameters to the proxy's outbound
  mTLS clusters (UpstreamTlsContext), as Kuma does: a `min: TLS13` inbound needs callers that
  speak TLS 1.3, and Envoy's clients stop at TLS 1.2 by default.
Where Kuma falls short: `min: TLS13` without a max leaves Kuma's outbound clusters at Envoy's client
default maximum, TLS 1.2, so mesh calls fail; here the maximum becomes TLS 1.3 then. Ciphers apply
even without `tlsVersion` (Kuma drops them on inbounds then).
"""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3 import common_pb2

from control_plane.policies.core.parts import InboundParts
from control_plane.policies.core.rules import InboundPolicy
from control_plane.policies.meshtls.api import PERMISSIVE, Conf

TLS_1_3 = common_pb2.TlsParameters.TLSv1_3
_PROTOCOLS = {
    "TLSAuto": common_pb2.TlsParameters.TLS_AUTO,
    "TLS10": common_pb2.TlsParameters.TLSv1_0,
    "TLS11": common_pb2.TlsParameters.TLSv1_1,
    "TLS12": common_pb2.TlsParameters.TLSv1_2,
    "TLS13": common_pb2.TlsParameters.TLSv1_3,
}


def apply_inbound(policy: InboundPolicy, parts: InboundParts) -> None:
    merged = policy.catch_all
    if merged is None or not parts.mtls:  # without mTLS every inbound is plaintext: nothing to do
        return
    conf: Conf = merged.parsed(Conf)
    if conf.mode is not None:
        parts.permissive = conf.mode == PERMISSIVE
    parameters = tls_parameters(conf)
    if parameters is not None:
        parts.tls_parameters = parameters


def tls_parameters(conf: Conf) -> common_pb2.TlsParameters | None:
    """The TlsParameters `conf` asks for (None: Envoy's defaults)."""
    version, ciphers = conf.tlsVersion, conf.tlsCiphers or []
    if not ciphers and (version is None or (version.min is None and version.max is None)):
        return None
    parameters = common_pb2.TlsParameters(cipher_suites=ciphers)
    if version is not None and version.min is not None:
        parameters.tls_minimum_protocol_version = _PROTOCOLS[version.min]
    if version is not None and version.max is not None:
        parameters.tls_maximum_protocol_version = _PROTOCOLS[version.max]
    if parameters.tls_minimum_protocol_version == TLS_1_3 and not parameters.tls_maximum_protocol_version:
        # Envoy's clients stop at TLS 1.2 unless told otherwise: outbound clusters would offer
        # nothing a TLS 1.3-only peer takes. Servers already go up to 1.3, so this changes only them.
        parameters.tls_maximum_protocol_version = TLS_1_3
    return parameters
