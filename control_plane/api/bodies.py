"""Decode a request body: JSON or YAML by Content-Type, errors naming where the text is broken."""

from __future__ import annotations

import json
from typing import Any

import yaml

from control_plane.api.errors import ApiError, invalid
from control_plane.yaml_errors import yaml_error_message

BODY_FIELD = "(body)"
_JSON_TYPES = ("application/json",)
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


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


def _decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise invalid(
            [{"field": BODY_FIELD, "message": "is not UTF-8 text"}], "Body is not valid JSON"
        ) from None
    except json.JSONDecodeError as exc:
        message = f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise invalid([{"field": BODY_FIELD, "message": message}], "Body is not valid JSON") from None
    except RecursionError:
        message = "is nested too deeply"
        raise invalid([{"field": BODY_FIELD, "message": message}], "Body is not valid JSON") from None


def _decode_yaml(raw: bytes) -> Any:
    try:
        documents = [doc for doc in yaml.safe_load_all(raw.decode("utf-8")) if doc is not None]
    except UnicodeDecodeError:
        raise invalid(
            [{"field": BODY_FIELD, "message": "is not UTF-8 text"}], "Body is not valid YAML"
        ) from None
    except yaml.YAMLError as exc:
        raise invalid(
            [{"field": BODY_FIELD, "message": yaml_error_message(exc)}], "Body is not valid YAML"
        ) from None
    except RecursionError:
        message = "is nested too deeply"
        raise invalid([{"field": BODY_FIELD, "message": message}], "Body is not valid YAML") from None
    if len(documents) > 1:
        message = "holds several YAML documents; send one resource per request"
        raise invalid([{"field": BODY_FIELD, "message": message}])
    return documents[0] if documents else None
