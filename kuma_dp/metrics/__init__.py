"""The metrics hijacker: Envoy's stats and the application's own metrics on one endpoint."""
