"""Kuma's common HTTP pieces policies share (api/common/v1alpha1/header.go): header names, header
matches, RE2 regular expressions, and their Envoy form."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import regex_pb2
from pydantic import AfterValidator, Field, model_validator

from control_plane.resources.common import StrictModel

# Kuma's HeaderName: lower case (matched case-insensitively), the characters of an HTTP token.
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+\-.^_`|~]{1,256}$")
# What Envoy's RE2 refuses and Python's `re` accepts: look-around and back-references.
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\\[1-9]")


def _header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a header name: 1-256 lower-case letters, digits or !#$%&'*+-.^_`|~"
        )
    return value


def check_regex(pattern: str) -> str:
    """`pattern` if Envoy's RE2 takes it; ValueError saying why not."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
    if _NOT_RE2.search(pattern):
        raise ValueError(
            f"{pattern!r} uses look-around or back-references, which Envoy's RE2 does not support"
        )
    return pattern


HeaderName = Annotated[str, Field(strict=True), AfterValidator(_header_name)]
Regex = Annotated[str, AfterValidator(check_regex)]


class HeaderMatch(StrictModel):
    """Kuma's HeaderMatch: `type` Exact (default), Prefix, RegularExpression (RE2), Present, Absent."""

    type: Literal["Exact", "Prefix", "RegularExpression", "Present", "Absent"] | None = None
    name: HeaderName
    value: str | None = None

    @model_validator(mode="after")
    def _value_fits_type(self) -> HeaderMatch:
        kind = self.type or "Exact"
        if kind in ("Present", "Absent"):
            if self.value is not None:
                raise ValueError(f"value: must not be set with type {kind} (only the name is matched)")
        elif kind in ("Prefix", "RegularExpression") and not self.value:
            raise ValueError(f"value: is required with type {kind}")
        elif kind == "RegularExpression":
            try:
                check_regex(self.value or "")
            except ValueError as exc:
                raise ValueError(f"value: {exc}") from None
        return self


def header_matcher(match: HeaderMatch) -> route_components_pb2.HeaderMatcher:
    kind = match.type or "Exact"
    matcher = route_components_pb2.HeaderMatcher(name=match.name)
    if kind == "Present":
        matcher.present_match = True
    elif kind == "Absent":
        matcher.present_match = False
    elif kind == "Prefix":
        matcher.string_match.prefix = match.value or ""
    elif kind == "RegularExpression":
        matcher.string_match.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=match.value or ""))
    else:
        matcher.string_match.exact = match.value or ""
    return matcher
