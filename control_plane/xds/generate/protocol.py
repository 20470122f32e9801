"""Which L7 protocol a service speaks, from its `kuma.io/protocol` tags (Kuma's inference)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from control_plane.resources.common import PROTOCOL_TAG

TCP = "tcp"
HTTP = "http"
HTTP2 = "http2"
GRPC = "grpc"
HTTP_PROTOCOLS = frozenset({HTTP, HTTP2, GRPC})
HTTP2_PROTOCOLS = frozenset({HTTP2, GRPC})


def tags_protocol(tags: Mapping[str, str]) -> str:
    """The protocol an inbound declares; unknown values (kafka, ...) are proxied as plain TCP."""
    value = tags.get(PROTOCOL_TAG, TCP)
    return value if value in HTTP_PROTOCOLS else TCP


def common_protocol(protocols: Iterable[str]) -> str:
    """The protocol every endpoint of a service can speak: HTTP only if all declare an HTTP flavour."""
    found = set(protocols)
    if len(found) == 1:
        return found.pop()
    if found and found <= HTTP2_PROTOCOLS:
        return HTTP2
    if found and found <= HTTP_PROTOCOLS:
        return HTTP
    return TCP


def is_http(protocol: str) -> bool:
    return protocol in HTTP_PROTOCOLS


def needs_http2_upstream(protocol: str) -> bool:
    return protocol in HTTP2_PROTOCOLS
