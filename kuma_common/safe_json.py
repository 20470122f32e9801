"""JSON from outside input, with every failure one ValueError.

`json.loads` raises RecursionError (not ValueError) on a document nested deeper than the
interpreter's stack allows, e.g. 100,000 `[`: a caller that catches ValueError for "not JSON"
would let it through as a crash. Parsers of outside input use `loads` here instead.
"""

from __future__ import annotations

import json
from typing import Any


def loads(data: str | bytes | bytearray) -> Any:
    """The document; ValueError (UnicodeDecodeError included) for anything that is not JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("the JSON document is nested too deeply") from None
