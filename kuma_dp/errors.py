"""The agent's one exception family: each carries a message a user can act on."""

from __future__ import annotations


class AgentError(Exception):
    """A failure the user caused or must fix; printed as `Error: <message>`, exit code 1."""


class ConfigError(AgentError):
    """Flags, environment or files given to the agent are wrong."""


class BootstrapError(AgentError):
    """The control plane refused the bootstrap, or could not be reached."""


class EnvoyError(AgentError):
    """Envoy could not be found, started, or kept running."""
