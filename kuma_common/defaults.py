"""Mesh-wide defaults every program agrees on (Kuma's values), declared once."""

from __future__ import annotations

DEFAULT_MESH = "default"

DP_SERVER_PORT = 5678  # control plane: /bootstrap, identity and ADS (TLS)
API_HTTP_PORT = 5681
API_HTTPS_PORT = 5682
DIAGNOSTICS_PORT = 5680  # control plane: /metrics, /ready, /healthy
ENVOY_ADMIN_PORT = 9901
READINESS_PORT = 9902
REDIRECT_PORT_OUTBOUND = 15001
REDIRECT_PORT_INBOUND = 15006
DNS_PROXY_PORT = 15053
