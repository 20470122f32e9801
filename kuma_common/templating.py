"""`-v key=value` variables and `{{ key }}` substitution, as `kumactl apply` and `kuma-dp run` do."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\}\}")


class TemplateError(ValueError):
    """A malformed `-v` item or a `{{ key }}` no variable provides; the message names it."""


def parse_var_assignments(items: Sequence[str], flag: str) -> dict[str, str]:
    """Turn `key=value` items (the value may itself contain '=') into a mapping."""
    variables: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TemplateError(f"{flag} {item!r} is not of the form key=value")
        variables[key.strip()] = value
    return variables


def substitute_vars(text: str, variables: Mapping[str, str], source: str) -> str:
    """Replace every `{{ key }}`; fail naming all keys that no `-v key=value` provided."""
    missing = sorted({m.group(1) for m in _VARIABLE.finditer(text)} - set(variables))
    if missing:
        hint = " ".join(f"-v {name}=VALUE" for name in missing)
        raise TemplateError(f"{source} uses {', '.join(missing)} but no value was given; add {hint}")
    return _VARIABLE.sub(lambda m: variables[m.group(1)], text)
