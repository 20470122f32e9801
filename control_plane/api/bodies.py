"""Decode a request body: JSON or YAML by Content-Type, errors naming where the text is broken.

Bodies are read up to `MAX_BODY_BYTES` (413 beyond), and parsed with bounded nesting and, for
YAML, bounded aliases and alias expansion (kuma_common.safe_yaml): a 300-byte "billion laughs"
document is a 400 naming the limit, never megabytes in the store."""

from __future__ import annotations

import json
from typing import Any

import yaml
from starlette.requests import Request

from control_plane.api.errors import ApiError, invalid
from control_plane.yaml_errors import yaml_error_message
from kuma_common import safe_yaml

BODY_FIELD = "(body)"
_JSON_TYPES = ("application/json",)
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


MAX_BODY_BYTES = safe_yaml.DEFAULT_LIMITS.max_bytes
MAX_JSON_DEPTH = safe_yaml.DEFAULT_LIMITS.max_depth


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (never buffered beyond it)."""
    too_large = ApiError(
        413,
        "Request Entity Too Large",
        f"the request body is larger than {limit} bytes (limit: max body size)",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def request_document(request: Request) -> Any:
    return decode_body(await read_body(request), request.headers.get("content-type"))


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_body(raw: bytes, content_type: str | None) -> Any:
    """JSON for `application/json` (and `+json`), YAML for the YAML types and for no Content-Type."""
    kind = media_type(content_type)
    if kind in _JSON_TYPES or kind.endswith("+json"):
        return _decode_json(raw)
    # YAML is (nearly) a superset of JSON, so a client that sends no type gets the lenient parser.
    if kind in _YAML_TYPES or kind in ("", "application/octet-stream", "text/plain"):
        return _decode_yaml(raw)
    accepted = ", ".join((*_JSON_TYPES, *_YAML_TYPES))
    raise ApiError(
        415, "Unsupported Media Type", f"Content-Type {kind!r} is not supported; send one of {accepted}"
    )


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether collections nest deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _decode_json(raw: bytes) -> Any:
    too_deep = invalid(
        [{"field": BODY_FIELD, "message": f"nests deeper than {MAX_JSON_DEPTH} levels (limit: max depth)"}],
        "Body is not valid JSON",
    )
    try:
        document = json.loads(raw)
    except RecursionError:  # json's C scanner gives up cleanly far below the interpreter's stack
        raise too_deep from None
    except UnicodeDecodeError:
        raise invalid(
            [{"field": BODY_FIELD, "message": "is not UTF-8 text"}], "Body is not valid JSON"
        ) from None
    except json.JSONDecodeError as exc:
        message = f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise invalid([{"field": BODY_FIELD, "message": message}], "Body is not valid JSON") from None
    if _deeper_than(document, MAX_JSON_DEPTH):
        raise too_deep
    return document


def _decode_yaml(raw: bytes) -> Any:
    try:
        documents = safe_yaml.safe_load_all(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise invalid(
            [{"field": BODY_FIELD, "message": "is not UTF-8 text"}], "Body is not valid YAML"
        ) from None
    except yaml.YAMLError as exc:
        raise invalid(
            [{"field": BODY_FIELD, "message": yaml_error_message(exc)}], "Body is not valid YAML"
        ) from None
    if len(documents) > 1:
        message = "holds several YAML documents; send one resource per request"
        raise invalid([{"field": BODY_FIELD, "message": message}])
    return documents[0] if documents else None
