"""Every default of the agent, in one place (Kuma's values unless noted)."""

from __future__ import annotations

from kuma_common import defaults, dp_contract

DEFAULT_CP_ADDRESS = f"https://localhost:{defaults.DP_SERVER_PORT}"
DEFAULT_MESH = defaults.DEFAULT_MESH
DEFAULT_PROXY_TYPE = dp_contract.DATAPLANE_PROXY_TYPE
RESOURCE_TYPE_BY_PROXY_TYPE = {"dataplane": "Dataplane", "ingress": "ZoneIngress", "egress": "ZoneEgress"}

DEFAULT_READINESS_PORT = defaults.READINESS_PORT
DEFAULT_READINESS_ADDRESS = "127.0.0.1"
READINESS_PATH = "/ready"

DEFAULT_RETRY_BACKOFF = "3s"
DEFAULT_RETRY_MAX_DURATION = "5m"
BOOTSTRAP_REQUEST_TIMEOUT_S = 10.0

DEFAULT_DRAIN_TIME = "30s"
DEFAULT_ENVOY_LOG_LEVEL = "info"
DEFAULT_LOG_LEVEL = "info"
ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")
LOG_LEVELS = ("debug", "info", "warning", "warn", "error", "off")

# Supervision (our addition; Kuma leaves restarts to systemd/kubelet).
DEFAULT_MAX_ENVOY_RESTARTS = 5
DEFAULT_ENVOY_RESTART_WINDOW = "60s"
RESTART_BACKOFF_INITIAL_S = 0.2
RESTART_BACKOFF_MAX_S = 10.0

# Stopping Envoy: grace between SIGTERM and SIGKILL, and how often the drain polls connections.
ENVOY_STOP_GRACE_S = 5.0
DRAIN_POLL_INTERVAL_S = 0.2
ENVOY_VERSION_TIMEOUT_S = 10.0

BOOTSTRAP_FILE_NAME = "bootstrap.yaml"
WORK_DIR_PREFIX = "kuma-dp-"
WORK_DIR_MODE = 0o711
BOOTSTRAP_FILE_MODE = 0o600

# Workload identity (docs/identity.md): key, certificate and CA in the work dir, read by Envoy's SDS
# (the directory, file and secret names Envoy's config uses are in kuma_common/dp_contract.py).
IDENTITY_KEY_FILE_NAME = "key.pem"
IDENTITY_CERTIFICATE_FILE_NAME = "cert.pem"
IDENTITY_DIR_MODE = 0o700
IDENTITY_FILE_MODE = 0o600
CERTIFICATE_REQUEST_TIMEOUT_S = 10.0
SERVICE_TAG = "kuma.io/service"
# Renew at 80 % of the lifetime, +- 5 points of jitter so that proxies started together spread out.
RENEWAL_FRACTION = 0.8
RENEWAL_JITTER = 0.05
RENEWAL_BACKOFF_INITIAL_S = 1.0
RENEWAL_BACKOFF_MAX_S = 30.0

# Token file watching; a changed token reaches Envoy's ADS stream only through a new bootstrap.
TOKEN_WATCH_DEBOUNCE_MS = 200
# After the token changed, Envoy (still holding the old token) is restarted once its ADS stream
# has been down this long while the control plane accepts the new token.
ADS_STALE_TOKEN_RESTART_S = 10.0
ADS_WATCH_INTERVAL_S = 1.0
ADS_CONNECTED_STAT = "control_plane.connected_state"
# Envoy's ADS stream down this long: the agent asks the CP whether it still accepts the token
# (kuma_dp/identity/token_refusal.py); a refusal (revoked, expired, key removed) ends the agent.
ADS_DOWN_PROBE_S = 5.0

# kuma-dp wait (Kuma's defaults)
DEFAULT_WAIT_URL = f"http://localhost:{DEFAULT_READINESS_PORT}{READINESS_PATH}"
DEFAULT_WAIT_TIMEOUT = "180s"
DEFAULT_WAIT_INTERVAL = "1s"
DEFAULT_WAIT_REQUEST_TIMEOUT = "500ms"

# Environment variables (Kuma's names).
ENV_CP_ADDRESS = "KUMA_CONTROL_PLANE_URL"
ENV_CA_CERT_FILE = "KUMA_CONTROL_PLANE_CA_CERT_FILE"
ENV_CA_CERT = "KUMA_CONTROL_PLANE_CA_CERT"
ENV_NAME = "KUMA_DATAPLANE_NAME"
ENV_MESH = "KUMA_DATAPLANE_MESH"
ENV_TOKEN = "KUMA_DATAPLANE_RUNTIME_TOKEN"
ENV_TOKEN_PATH = "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH"
ENV_BINARY_PATH = "KUMA_DATAPLANE_RUNTIME_BINARY_PATH"
ENV_READINESS_PORT = "KUMA_READINESS_PORT"
ENV_READINESS_ADDRESS = "KUMA_READINESS_ADDRESS"
ENV_RETRY_BACKOFF = "KUMA_CONTROL_PLANE_RETRY_BACKOFF"
ENV_RETRY_MAX_DURATION = "KUMA_CONTROL_PLANE_RETRY_MAX_DURATION"

# The agent's DNS server (kuma_dp/dns/; docs/dns.md). Kuma 2.14's settings: `--dns-enabled` /
# KUMA_DNS_ENABLED (default true); the port is KUMA_DNS_PROXY_PORT (Kuma's embedded DNS proxy, which
# this server is) when non-zero, else `--dns-coredns-port` / KUMA_DNS_CORE_DNS_PORT (the port the
# iptables rules redirect DNS to), 15053 by default.
DEFAULT_DNS_PORT = defaults.DNS_PROXY_PORT
DNS_LISTEN_ADDRESSES = ("127.0.0.1", "::1")  # where the REDIRECT of locally sent packets lands
DNS_RESOLV_CONF = "/etc/resolv.conf"
DNS_TTL_S = 30  # of the answers for mesh names: short, a VIP can change when a service is re-created
DNS_RECORDS_POLL_INTERVAL_S = 0.5
DNS_RECORDS_REQUEST_TIMEOUT_S = 2.0
DNS_RECORDS_MAX_BYTES = 16 << 20  # a mesh of ~100,000 names; a larger body is refused, not read
# Forwarding: each upstream gets at most DNS_UPSTREAM_TIMEOUT_S, the whole query DNS_FORWARD_DEADLINE_S
# (below glibc's 5 s, so the client sees our SERVFAIL rather than its own timeout).
DNS_UPSTREAM_TIMEOUT_S = 2.0
DNS_FORWARD_DEADLINE_S = 4.0
DNS_MAX_FORWARDS_IN_FLIGHT = 256  # beyond: UDP queries dropped (and counted), TCP ones get SERVFAIL
DNS_UDP_SEND_BUFFER_LIMIT = 256 << 10  # answers beyond what the kernel did not take yet are dropped
DNS_MAX_TCP_CONNECTIONS = 64  # beyond: new connections are closed at once
DNS_TCP_IDLE_TIMEOUT_S = 10.0  # a connection with no complete query for this long is closed

ENV_DNS_ENABLED = "KUMA_DNS_ENABLED"
ENV_DNS_PROXY_PORT = "KUMA_DNS_PROXY_PORT"
ENV_DNS_CORE_DNS_PORT = "KUMA_DNS_CORE_DNS_PORT"

# Metrics hijacker (MeshMetric): how long a scrape waits for each application (and Envoy). Kuma
# has no such bound (a scrape waits as long as the scraper does); ours keeps Envoy's series flowing
# when an application hangs. Our own variable.
ENV_METRICS_APPLICATION_TIMEOUT = "KUMA_METRICS_APPLICATION_TIMEOUT"
DEFAULT_METRICS_APPLICATION_TIMEOUT = "2s"
DEFAULT_METRICS_APPLICATION_TIMEOUT_S = 2.0
