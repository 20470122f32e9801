"""One readable line for a YAML syntax error, with the 1-based positions an editor shows."""

from __future__ import annotations

import yaml


def yaml_error_message(exc: yaml.YAMLError) -> str:
    """`line L, column C: problem (while parsing X started at line L', column C')`."""
    problem = getattr(exc, "problem", None)
    if problem is None:
        return str(exc)
    mark = getattr(exc, "problem_mark", None)
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
    context = getattr(exc, "context", None)
    if context:
        # The problem is often only noticed at the end of the text; where it started is the useful part.
        context_mark = getattr(exc, "context_mark", None)
        started = (
            f" started at line {context_mark.line + 1}, column {context_mark.column + 1}"
            if context_mark is not None
            else ""
        )
        text += f" ({context}{started})"
    return text
