"""Everything that touches Envoy: the binary, the process, the admin API."""
