"""The one version of every program here (pyproject reads it too); Kuma release we follow."""

__version__ = "0.1.0"
BASED_ON_KUMA = "2.14.0"
