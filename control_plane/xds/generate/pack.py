"""Packing protobuf messages into the `Any` fields Envoy's typed configs use."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def network_filter(name: str, config: Message) -> listener_components_pb2.Filter:
    return listener_components_pb2.Filter(name=name, typed_config=pack(config))
