"""Monitoring assignments: Prometheus discovery of every proxy's metrics endpoint (port 5676)."""
