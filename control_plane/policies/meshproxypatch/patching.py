"""Patching one Envoy message the way a modification says: with `value`, a merge (Kuma's
`proto.Merge`: set fields replace, lists are appended to, maps take the value's entries, messages
merge field by field); with `jsonPatches`, RFC 6902 on its JSON, parsed back into the same type.

Better than Kuma's merge: a duration, timestamp or wrapped scalar (`google.protobuf.Duration`,
`UInt32Value`, ...) is one value and is replaced, not merged field by field (Kuma's merge of
`connectTimeout: 0.5s` into 5s gives 5.5s: nanos set, seconds 0 "unset"). As in Kuma, a plain
scalar set to its zero value (0, false, "") is not seen by a merge: use jsonPatches for that.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message

from control_plane.policies.meshproxypatch.api import JsonPatch
from control_plane.policies.meshproxypatch.envoy_json import (
    EnvoyJsonError,
    from_json,
    pack,
    parsed_value,
    to_json,
    unpack,
)
from control_plane.policies.meshproxypatch.jsonpatch import apply_patch

M = TypeVar("M", bound=Message)


def copy_of(message: M) -> M:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def patched(message: M, value: str | None, patches: list[JsonPatch] | None) -> M:
    """A patched copy of `message` (the original is left alone)."""
    if patches is not None:
        document = apply_patch(to_json(message), [p.operation() for p in patches])
        return from_json(document, type(message))
    result = copy_of(message)
    if value is not None:
        merge_into(result, parsed_value(value, type(message)))
    return result


ATOMIC = frozenset(
    f"google.protobuf.{name}"
    for name in (
        "Duration", "Timestamp", "Any", "DoubleValue", "FloatValue", "Int64Value", "UInt64Value",
        "Int32Value", "UInt32Value", "BoolValue", "StringValue", "BytesValue",
    )
)  # fmt: skip


def merge_into(target: Message, source: Message) -> None:
    """protobuf's MergeFrom, except that ATOMIC messages are replaced whole."""
    for field, value in source.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(target, field.name).MergeFrom(value)  # a map: the source's entries win
        elif field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is None:
            setattr(target, field.name, value)
        elif field.message_type.full_name in ATOMIC:
            getattr(target, field.name).CopyFrom(value)
        else:
            merge_into(getattr(target, field.name), value)


def patched_typed_config(
    typed_config: any_pb2.Any, value_config: any_pb2.Any | None, patches: list[JsonPatch] | None
) -> any_pb2.Any:
    """A filter's typed config patched: merged with the value's own typed config (of the same
    type), or JSON-patched (paths inside the typed config, as Kuma's)."""
    if not typed_config.type_url:
        raise EnvoyJsonError("the filter has no typed_config to patch")
    config = unpack(typed_config)
    if patches is not None:
        return pack(patched(config, None, patches))
    if value_config is None or not value_config.type_url:
        return typed_config
    if value_config.type_url != typed_config.type_url:
        theirs, ours = value_config.TypeName(), typed_config.TypeName()
        raise EnvoyJsonError(f"the value's typed config is a {theirs}, the filter's a {ours}")
    config.MergeFrom(unpack(value_config))
    return pack(config)
