"""Every name and default of the transparent proxy (Kuma's values), declared once."""

from __future__ import annotations

from kuma_common import defaults

REDIRECT_PORT_INBOUND = defaults.REDIRECT_PORT_INBOUND
REDIRECT_PORT_OUTBOUND = defaults.REDIRECT_PORT_OUTBOUND
DNS_PROXY_PORT = defaults.DNS_PROXY_PORT
DNS_PORT = 53
# Kuma's `redirect.dns.resolvConfigPath`: `--redirect-dns` (without capturing everything) redirects
# only the queries addressed to the nameservers listed here, read at install time.
DEFAULT_RESOLV_CONFIG_PATH = "/etc/resolv.conf"

DEFAULT_PROXY_USER = "kuma-dp"
DEFAULT_PROXY_UID = 5678

CHAIN_PREFIX = "KUMA_MESH"
CHAIN_INBOUND = f"{CHAIN_PREFIX}_INBOUND"
CHAIN_INBOUND_REDIRECT = f"{CHAIN_PREFIX}_INBOUND_REDIRECT"
CHAIN_OUTBOUND = f"{CHAIN_PREFIX}_OUTBOUND"
CHAIN_OUTBOUND_REDIRECT = f"{CHAIN_PREFIX}_OUTBOUND_REDIRECT"
COMMENT_PREFIX = "kuma/mesh/transparent/proxy/"

LOOPBACK_INTERFACE = "lo"
# Envoy's inbound passthrough cluster binds to this source, so its traffic to the app is not re-captured.
INBOUND_PASSTHROUGH_SOURCE_V4 = "127.0.0.6"
INBOUND_PASSTHROUGH_SOURCE_V6 = "::6"
LOCALHOST_V4 = "127.0.0.1"
LOCALHOST_V6 = "::1"

# Conntrack zones that keep the proxy's DNS flows apart from the app's (Kuma's numbers).
DNS_CT_ZONE_PROXY = 1
DNS_CT_ZONE_APP = 2

IP_FAMILY_DUALSTACK = "dualstack"
IP_FAMILY_IPV4 = "ipv4"
IP_FAMILY_MODES = (IP_FAMILY_DUALSTACK, IP_FAMILY_IPV4)

# iptables-restore: seconds to wait for the xtables lock, and how often we retry a busy lock on top.
XTABLES_WAIT_S = 5
RESTORE_ATTEMPTS = 3
RESTORE_RETRY_DELAY_S = 0.2

# Validator (Kuma's kuma-validation): the probe client connects here, to a random port in this range.
VALIDATION_SERVER_IP = "127.0.0.6"
VALIDATION_PORT_RANGE = (20000, 30000)
VALIDATION_TIMEOUT_S = 2.0
VALIDATION_REMOTE_IP = "192.0.2.1"  # TEST-NET-1: the outbound probe's target when a default route exists
VALIDATION_CLIENT_UIDS = (65534, 4321, 1000)  # the outbound probe runs as the first one not excluded
