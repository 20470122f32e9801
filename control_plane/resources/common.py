"""Pieces shared by every resource model: names, tags, ports and error formatting."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from kuma_common import defaults

SERVICE_TAG = "kuma.io/service"
PROTOCOL_TAG = "kuma.io/protocol"
DEFAULT_MESH = defaults.DEFAULT_MESH

# Kuma accepts DNS-1123-like names (lowercase alphanumerics, '-', '.', '_' is not allowed).
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$")
_TAG_KEY_RE = re.compile(r"^[a-zA-Z0-9.\-_:/]+$")
_TAG_VALUE_RE = re.compile(r"^[a-zA-Z0-9.\-_:/*]+$")

Port = Annotated[int, Field(ge=1, le=65535)]


class StrictModel(BaseModel):
    """Every resource part refuses unknown fields, so a typo is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            "must be 1-253 characters of lowercase letters, digits, '-' or '.', "
            "starting and ending with a letter or digit"
        )
    return value


def validate_tags(tags: dict[str, str], *, require_service: bool) -> dict[str, str]:
    for key, value in tags.items():
        if not _TAG_KEY_RE.match(key):
            raise ValueError(f"tag name {key!r} has characters other than letters, digits, '.-_:/'")
        if not isinstance(value, str) or not value or not _TAG_VALUE_RE.match(value):
            raise ValueError(f"tag {key!r} must have a non-empty value of letters, digits or '.-_:/*'")
    if require_service and not tags.get(SERVICE_TAG):
        raise ValueError(f"tag {SERVICE_TAG!r} is required")
    return tags


def check_mesh_name(value: str) -> str:
    """A resource name that can also be a mesh: Envoy node ids are `<mesh>.<name>`, split on the
    first dot, so a mesh name cannot hold one."""
    check_name(value)
    if "." in value:
        raise ValueError("a mesh name cannot contain '.'")
    return value


MeshName = Annotated[str, AfterValidator(check_mesh_name)]


class NamedResource(StrictModel):
    """type/mesh/name header of a universal resource, plus Kuma's read-only timestamps."""

    name: str
    creationTime: str | None = None
    modificationTime: str | None = None
    labels: dict[str, str] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)


def format_validation_error(exc: ValidationError) -> list[dict[str, str]]:
    """Turn pydantic's errors into Kuma's `causes`: one {field, message} per offending field."""
    causes = []
    for err in exc.errors():
        field, message = _field_path(err.get("loc", ())), _message(err)
        # A model-level check names its sub-field as "sub: message"; move that into the path.
        sub, sep, rest = message.partition(": ")
        if sep and _SUBFIELD_RE.match(sub):
            field, message = (f"{field}.{sub}" if field != "(root)" else sub), rest
        causes.append({"field": field, "message": message})
    return causes


_SUBFIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\[\d+\])?(\.[A-Za-z][A-Za-z0-9]*(\[\d+\])?)*$")


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "(root)"


def _message(err: dict[str, Any]) -> str:
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    if err.get("type") == "missing":
        return "field is required"
    if err.get("type") == "literal_error":
        return f"unknown value {err.get('input')!r}; expected {(err.get('ctx') or {}).get('expected')}"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


class MeshScopedResource(NamedResource):
    """A resource that lives in a mesh (Dataplane, policies)."""

    mesh: MeshName = DEFAULT_MESH
