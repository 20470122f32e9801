"""What the agent and the control plane agree on, declared once and imported by both sides.

The DP server's paths, the bodies of `POST /bootstrap` and `POST /certificate` (Kuma's field names),
the Envoy node metadata the rendered bootstrap carries back to the control plane over ADS, and where
in the agent's work dir Envoy finds its secrets (file-based SDS). Every value here is on the wire or
on disk between two programs that may be of different versions: change none of them lightly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# --- identity: what a workload certificate names, what the CA signs and peers verify -----------------


def spiffe_id(mesh: str, service: str) -> str:
    """`spiffe://<mesh>/<service>`; with service "" the prefix every identity of the mesh shares."""
    return f"spiffe://{mesh}/{service}"


# --- the DP server (TLS, port 5678; ADS gRPC shares the port, routed by ALPN) ----------------------

BOOTSTRAP_PATH = "/bootstrap"
CERTIFICATE_PATH = "/certificate"
# The dataplane token: HTTP header of `POST /certificate`, gRPC initial metadata of the ADS stream.
TOKEN_HEADER = "authorization"

DATAPLANE_PROXY_TYPE = "dataplane"
PROXY_TYPES = (DATAPLANE_PROXY_TYPE, "ingress", "egress")


# --- POST /bootstrap -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapRequest:
    """The agent's request body. Field names are Kuma's; a field the agent leaves out takes the
    default here on the control plane's side, and a field the control plane does not know is
    ignored (newer agents may send more)."""

    mesh: str = ""
    name: str = ""
    proxyType: str = DATAPLANE_PROXY_TYPE
    dataplaneToken: str = ""
    dataplaneResource: str = ""  # the Dataplane as a JSON string (universal mode)
    version: dict[str, Any] = field(default_factory=dict)  # {"kumaDp": {...}, "envoy": {...}}
    caCert: str = ""  # PEM of the CA the agent trusts for the control plane
    dynamicMetadata: dict[str, str] = field(default_factory=dict)
    readinessPort: int | None = None
    workdir: str = ""  # absolute
    features: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The response: {"bootstrap": <base64 of the Envoy bootstrap YAML>, "kumaSidecarConfiguration": {...}}.
BOOTSTRAP_FIELD = "bootstrap"
SIDECAR_CONFIGURATION_FIELD = "kumaSidecarConfiguration"
# In the sidecar configuration's `networking`: whether the Dataplane uses transparent proxying.
TRANSPARENT_PROXY_FIELD = "isUsingTransparentProxy"


# --- POST /certificate (docs/identity.md) -------------------------------------------------------


@dataclass(frozen=True)
class CertificateRequest:
    """The agent's CSR for its workload identity; the token goes in the TOKEN_HEADER header."""

    mesh: str
    name: str
    csr: str  # PEM
    # The Dataplane resource as sent at /bootstrap (JSON), if the agent has one: any control-plane
    # instance can then check the CSR, not only the one that served the bootstrap.
    dataplane: str = ""

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v or k != "dataplane"}


# The response's fields: the signed leaf (PEM), the mesh CA bundle (PEM), the leaf's expiry
# (ISO 8601, UTC, e.g. 2026-01-31T12:00:00Z) and its serial number (hex, for logs).
CERTIFICATE_FIELD = "certificate"
CA_BUNDLE_FIELD = "caBundle"
NOT_AFTER_FIELD = "notAfter"
SERIAL_FIELD = "serial"


# --- Envoy node metadata: written into the bootstrap by the control plane, read back over ADS ------

PROXY_TYPE_METADATA_KEY = "dataplane.proxyType"
RESOURCE_METADATA_KEY = "dataplane.resource"  # the Dataplane the agent sent (JSON), universal mode
ADMIN_PORT_METADATA_KEY = "dataplane.admin.port"
READINESS_PORT_METADATA_KEY = "dataplane.readinessReporter.port"
WORKDIR_METADATA_KEY = "workdir"  # the agent's work dir: where the SDS files below live
VERSION_METADATA_KEY = "version"
FEATURES_METADATA_KEY = "features"
DYNAMIC_METADATA_KEY = "dynamicMetadata"
# Who the proxy is, for outbound access logs (control_plane/policies/meshaccesslog/formats.py).
ACCESS_LOG_METADATA_KEY = "accessLog"


# --- the agent's work dir: files the control plane's Envoy config names ---------------------------

IDENTITY_DIR = "identity"  # the agent's key and certificate (0700)
SDS_DIR = f"{IDENTITY_DIR}/sds"  # the SDS files Envoy watches; relative to the work dir
IDENTITY_FILE = "identity.yaml"  # in SDS_DIR: the secret IDENTITY_SECRET (certificate chain + key)
MESH_CA_FILE = "ca.yaml"  # in SDS_DIR: the secret MESH_CA_SECRET (the mesh CA bundle)
IDENTITY_SECRET = "identity"
MESH_CA_SECRET = "mesh_ca"
ADMIN_SOCKET_NAME = "envoy-admin.sock"  # Envoy's admin API (0600) unless the Dataplane asks for a port


# --- service names: the DNS records the control plane sends, through the proxy's own Envoy -------
# For a transparent proxy, Envoy listens on `<workdir>/<DNS_RECORDS_SOCKET>` (0600) and answers
# `GET <DNS_RECORDS_PATH>` with a JSON body
#   {"domain": "mesh", "records": [{"name": "backend.mesh", "ips": ["240.0.0.3"]}, ...]}
# (names are lower case, absolute names without the trailing dot; the `ips` are the service's
# virtual IPs) and an `etag` header that changes when the records do. The agent's DNS server polls
# it (If-None-Match) and answers A queries for those names from it.
DNS_RECORDS_SOCKET = "kuma-dns.sock"
DNS_RECORDS_PATH = "/dns"
DNS_DOMAIN = "mesh"  # Kuma's KUMA_DNS_SERVER_DOMAIN default


# --- metrics: the merged Prometheus endpoint (MeshMetric, docs/metrics.md) -------------------------
# Envoy's listener on the MeshMetric backend's port routes the scrape path to the agent's metrics
# hijacker on `<workdir>/<METRICS_HIJACKER_SOCKET>` (0600), path rewritten to METRICS_HIJACKER_PATH
# (the scraper's query string kept). What to merge comes from the control plane through the proxy's
# own Envoy: `<workdir>/<METRICS_CONFIG_SOCKET>` answers `GET <METRICS_CONFIG_PATH>` (Kuma's dynconf
# path) with an etag and a JSON body
#   {"observability": {"metrics": {"applications": [{"name", "path", "port", "address"}],
#                                  "sidecar": {"profiles": {...}, "includeUnused": false}}}}
# (Kuma's dpapi shape; `sidecar` as the MeshMetric conf has it), and 404 when no MeshMetric selects
# the proxy.
METRICS_HIJACKER_SOCKET = "kuma-metrics-hijacker.sock"
METRICS_HIJACKER_PATH = "/meshmetric"
METRICS_CONFIG_SOCKET = "kuma-meshmetric-config.sock"
METRICS_CONFIG_PATH = "/meshmetric"
