"""Every cache on the DP server's unauthenticated path is bounded and keeps only what was proved:
the verified-token cache, the recently bootstrapped Dataplanes; tokens have a size bound."""

from __future__ import annotations

import base64
import json

import pytest

from control_plane.dp_server.recent_dataplanes import RecentDataplanes
from control_plane.resources.dataplane import Dataplane
from control_plane.store.base import mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.tokens import TokenRejected, TokenRequest, current_signing_key, issue_token, verify_token
from control_plane.tokens import verify as verify_module


def _dataplane(name: str = "web-1") -> Dataplane:
    inbound = [{"port": 20000, "tags": {"kuma.io/service": "web"}}]
    doc = {
        "type": "Dataplane",
        "mesh": "default",
        "name": name,
        "networking": {"address": "127.0.0.1", "inbound": inbound},
    }
    return Dataplane.model_validate(doc)


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    current_signing_key(store, "default")
    return store


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(index: int, padding: int = 0) -> str:
    """A well-formed token naming the mesh's real key, with a signature that is not one."""
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "1"}).encode())
    claims = {
        "Mesh": "default",
        "Name": "web-1",
        "Type": "dataplane",
        "jti": str(index),
        "pad": "x" * padding,
    }
    return f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(b'x' * 256)}"


def _reason(store: MemoryStore, token: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as caught:
        verify_token(store, token, _dataplane())
    return caught.value


def test_unverified_tokens_are_never_cached(store: MemoryStore) -> None:
    cache = verify_module.VERIFIED_TOKENS
    cache.clear()
    for index in range(300):
        assert _reason(store, _unsigned(index, padding=1000)).reason == "bad signature"
    assert len(cache) == 0
    verify_token(store, issue_token(store, TokenRequest("default", "web-1")), _dataplane())
    assert len(cache) == 1


def test_an_oversized_token_is_refused_before_it_is_decoded(store: MemoryStore) -> None:
    rejected = _reason(store, _unsigned(1, padding=verify_module.MAX_TOKEN_CHARS))
    assert rejected.reason == "malformed"
    assert f"longer than {verify_module.MAX_TOKEN_CHARS}" in rejected.detail


def test_the_verified_token_cache_is_a_bounded_lru(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = verify_module.VerifiedTokenCache(max_entries=3)
    monkeypatch.setattr(verify_module, "VERIFIED_TOKENS", cache)
    tokens = [issue_token(store, TokenRequest("default", "web-1")) for _ in range(5)]
    for token in tokens:
        verify_token(store, token, _dataplane())
    assert len(cache) == 3
    assert cache.get(tokens[0]) is None and cache.get(tokens[-1]) is not None


def test_recent_dataplanes_are_bounded() -> None:
    recent = RecentDataplanes(max_entries=3)
    for index in range(10):
        recent.remember(_dataplane(f"web-{index}"))
    assert len(recent) == 3
    assert recent.get("default", "web-9") is not None and recent.get("default", "web-0") is None
