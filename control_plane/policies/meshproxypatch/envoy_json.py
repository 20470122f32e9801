"""Envoy messages in the form MeshProxyPatch users write them: proto3 JSON (field names camelCase
or snake_case, durations as "5s", an `Any` as `{"@type": "type.googleapis.com/<message>", ...}`),
given as YAML or JSON text.

An `Any` may name any Envoy extension: its message type is imported on first use, from the
generated protobuf modules of its package (only Envoy's, xDS's, UDPA's and protobuf's own; nothing
else is ever imported because a policy named it).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from typing import Any, TypeVar

import yaml
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from kuma_common import safe_yaml

M = TypeVar("M", bound=Message)
TYPE_URL_PREFIX = "type.googleapis.com/"
_IMPORTABLE = re.compile(r"^(envoy|xds|udpa|google\.protobuf)(\.[a-z0-9_]+)+$")


class EnvoyJsonError(ValueError):
    """Text that is not the JSON of the expected Envoy message (the message says where)."""


def parse_text(text: str, message_type: type[M]) -> M:
    """The `message_type` message that YAML or JSON `text` describes."""
    try:
        data = safe_yaml.safe_load(text)  # API input: bounded (an alias bomb here would expand below)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise EnvoyJsonError(f"not YAML or JSON: {getattr(exc, 'problem', None) or exc}{where}") from None
    if not isinstance(data, dict):
        raise EnvoyJsonError(f"must be a YAML or JSON object (a {message_type.DESCRIPTOR.name})")
    return from_json(data, message_type)


@functools.lru_cache(maxsize=256)
def _parsed(text: str, message_type: type[Message]) -> Message:
    return parse_text(text, message_type)


def parsed_value(text: str, message_type: type[M]) -> M:
    """`parse_text`, parsed once per text: a fresh copy the caller may change."""
    message = message_type()
    message.CopyFrom(_parsed(text, message_type))
    return message


def from_json(data: dict[str, Any], message_type: type[M]) -> M:
    _import_any_types(data)
    message = message_type()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        raise EnvoyJsonError(str(exc).split("\n")[0].strip()) from None
    return message


def to_json(message: Message) -> dict[str, Any]:
    """The message as proto3 JSON (camelCase names: the paths of Kuma's jsonPatches)."""
    return json_format.MessageToDict(message)


def _import_any_types(data: Any) -> None:
    """Import the message types `@type` fields name, so that `ParseDict` knows them."""
    if isinstance(data, dict):
        type_url = data.get("@type")
        if isinstance(type_url, str):
            _import_message_type(type_url.rsplit("/", 1)[-1])
        for value in data.values():
            _import_any_types(value)
    elif isinstance(data, list):
        for value in data:
            _import_any_types(value)


@functools.lru_cache(maxsize=1024)
def _import_message_type(full_name: str) -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName(full_name)
        return
    except KeyError:
        pass
    package = full_name.rsplit(".", 1)[0]
    if not _IMPORTABLE.match(package):
        return  # ParseDict then says the type is unknown
    try:
        module = importlib.import_module(package)
    except ImportError:
        return
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")


def unpack(packed: any_pb2.Any) -> Message:
    """The message inside an `Any` (its type imported if need be)."""
    full_name = packed.TypeName()
    _import_message_type(full_name)
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        raise EnvoyJsonError(f"unknown message type {full_name!r}") from None
    message = message_factory.GetMessageClass(descriptor)()
    packed.Unpack(message)
    return message


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed
