"""`kumactl`: Kuma's CLI for the control plane's REST API (HTTP only, never the store)."""
