"""The control plane's diagnostics: its metrics (`metrics`), their HTTP request timing
(`http_metrics`) and the server on Kuma's port 5680 (`server`)."""
