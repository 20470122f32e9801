"""The Dataplane resource given to `kuma-dp run`: read (inline, file or stdin), template, parse."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from kuma_common import safe_yaml, templating
from kuma_dp.errors import ConfigError

STDIN_MARKER = "-"


def parse_var_assignments(items: Sequence[str]) -> dict[str, str]:
    """Turn `-v key=value` items into a mapping; the value may itself contain '='."""
    try:
        return templating.parse_var_assignments(items, "--dataplane-var")
    except templating.TemplateError as exc:
        raise ConfigError(str(exc)) from None


def read_dataplane_text(inline: str | None, file: str | None, stdin: TextIO) -> tuple[str, str] | None:
    """Return (text, source description) of the Dataplane given, or None when none was given."""
    if inline is not None and file is not None:
        raise ConfigError("--dataplane and --dataplane-file are mutually exclusive; give one")
    if inline is not None:
        return inline, "--dataplane"
    if file is None:
        return None
    if file == STDIN_MARKER:
        return stdin.read(), "--dataplane-file - (stdin)"
    try:
        return Path(file).read_text(encoding="utf-8"), f"--dataplane-file {file}"
    except OSError as exc:
        raise ConfigError(f"--dataplane-file {file}: cannot read: {exc.strerror or exc}") from None


def substitute_vars(text: str, variables: Mapping[str, str], source: str) -> str:
    try:
        return templating.substitute_vars(text, variables, source)
    except templating.TemplateError as exc:
        raise ConfigError(str(exc)) from None


def parse_dataplane(text: str, source: str) -> dict[str, Any]:
    """Parse YAML or JSON text into a resource mapping, with a message naming the source on failure."""
    try:
        # Limited (size, depth, aliases): the agent sends this document to the control plane.
        document = safe_yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a Dataplane resource (a YAML mapping), got {_kind(document)}")
    return document


def load_dataplane(
    inline: str | None, file: str | None, variables: Mapping[str, str], stdin: TextIO
) -> dict[str, Any] | None:
    """Read, template and parse the Dataplane given by flags; None when no resource was given."""
    given = read_dataplane_text(inline, file, stdin)
    if given is None:
        if variables:
            raise ConfigError("--dataplane-var given without --dataplane or --dataplane-file")
        return None
    text, source = given
    return parse_dataplane(substitute_vars(text, variables, source), source)


def dataplane_json(resource: Mapping[str, Any]) -> str:
    """The Dataplane as the JSON string the bootstrap request carries."""
    return json.dumps(resource, separators=(",", ":"), default=str)


def _kind(value: object) -> str:
    if value is None:
        return "an empty document"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"
