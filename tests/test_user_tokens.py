"""User tokens (pure and in-process): claims, verification, who is admin, and the API's rules for
loopback, proxies, Host and tokens (ASGI, no sockets). End to end: test_admin_api_authn_e2e.py."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from control_plane.api.app import create_app
from control_plane.kumactl.cli import main as kumactl
from control_plane.store.defaults import ensure_default_mesh
from control_plane.store.memory import MemoryStore
from control_plane.tokens import TokenRejected, TokenRequest, issue_token
from control_plane.tokens.keys import new_private_key, private_key_pem
from control_plane.tokens.user import (
    ADMIN,
    ANONYMOUS,
    User,
    admin_token_key,
    bootstrap_admin_token,
    issue_user_token,
    sign_user_token,
    signing_key_key,
    verify_user_token,
)


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    ensure_default_mesh(store)
    return store


def test_groups_decide_who_is_admin() -> None:
    assert ADMIN.is_admin and not ANONYMOUS.is_admin
    assert User("bob", ("mesh-system:admin",)).is_admin
    assert not User("alice", ("team-a",)).authenticated().is_admin
    assert str(User("alice", ("team-a",)).authenticated()) == "alice/team-a,mesh-system:authenticated"


def test_issued_tokens_verify_until_they_expire(store: MemoryStore) -> None:
    now = time.time()
    token = issue_user_token(store, User("alice", ("team-a",)), 3600, now=now)
    assert verify_user_token(store, token, now=now) == User("alice", ("team-a", "mesh-system:authenticated"))
    with pytest.raises(TokenRejected) as info:
        verify_user_token(store, token, now=now + 3600 + 60)
    assert info.value.reason == "expired"


def test_tokens_of_removed_keys_and_other_kinds_are_refused(store: MemoryStore) -> None:
    dataplane_token = issue_token(store, TokenRequest("default", "web-1"))
    with pytest.raises(TokenRejected):  # a mesh key signed it: never a user token
        verify_user_token(store, dataplane_token)
    token = issue_user_token(store, User("alice"), 3600)
    store.delete(signing_key_key(1))
    with pytest.raises(TokenRejected) as info:
        verify_user_token(store, token)
    assert info.value.reason == "unknown key"


def test_offline_signed_tokens_verify_with_the_stored_key(store: MemoryStore) -> None:
    issue_user_token(store, User("seed"), 60)  # makes key 1
    pem = base64.b64decode(store.get(signing_key_key(1)).spec["data"])
    token = sign_user_token(User("ops", ("mesh-system:admin",)), 600, pem, "1")
    assert verify_user_token(store, token).is_admin


def test_admin_token_is_made_once(store: MemoryStore) -> None:
    assert bootstrap_admin_token(store) is True
    stored = store.get(admin_token_key())
    assert bootstrap_admin_token(store) is False
    token = base64.b64decode(stored.spec["data"]).decode()
    assert verify_user_token(store, token).is_admin
    assert store.get(admin_token_key()) == stored


def client(
    store: MemoryStore, peer: str, base: str = "http://localhost:5681", **headers: str
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(store), client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url=base, headers=headers)


@pytest.mark.parametrize(
    ("peer", "base", "headers", "why"),
    [
        ("10.1.2.3", "http://localhost:5681", {}, "came from 10.1.2.3"),
        ("127.0.0.1", "http://localhost:5681", {"X-Forwarded-For": "1.2.3.4"}, "through a proxy"),
        ("127.0.0.1", "http://localhost:5681", {"X-Real-IP": "1.2.3.4"}, "through a proxy"),
        ("127.0.0.1", "http://rebound.example:5681", {}, "Host 'rebound.example:5681'"),
        ("127.0.0.1", "http://localhost:5681", {"Sec-Fetch-Site": "cross-site"}, "cross-site"),
        ("127.0.0.1", "http://localhost:5681", {"Origin": "http://evil.example"}, "evil.example"),
    ],
    ids=["remote", "forwarded", "real-ip", "rebinding-host", "cross-site", "foreign-origin"],
)
async def test_what_is_not_localhost(
    store: MemoryStore, peer: str, base: str, headers: dict[str, str], why: str
) -> None:
    async with client(store, peer, base, **headers) as api:
        assert (await api.get("/meshes/default")).status_code == 200
        response = await api.put("/meshes/x", json={"type": "Mesh"})
    assert response.status_code == 403
    assert why in response.json()["details"]
    assert [r.key.name for r in store.list("Mesh")[0]] == ["default"]


async def test_an_admin_token_works_from_anywhere_and_a_bad_one_is_401(store: MemoryStore) -> None:
    admin = issue_user_token(store, ADMIN, 600)
    async with client(store, "10.1.2.3", Authorization=f"Bearer {admin}") as api:
        assert (await api.put("/meshes/x", json={"type": "Mesh"})).status_code == 201
        token = await api.post("/tokens/user", json={"name": "alice", "groups": ["g"], "validFor": "1h"})
    assert token.status_code == 200 and verify_user_token(store, token.text).name == "alice"
    forged = sign_user_token(ADMIN, 600, private_key_pem(new_private_key()), "1")  # not our key
    async with client(store, "10.1.2.3", Authorization=f"Bearer {forged}") as api:
        response = await api.get("/meshes")
    assert response.status_code == 401 and "bad signature" in response.json()["details"]


async def test_user_token_requests_name_the_field(store: MemoryStore) -> None:
    async with client(store, "127.0.0.1") as api:
        no_valid_for = await api.post("/tokens/user", json={"name": "alice"})
        bad = await api.post("/tokens/user", json={"name": "alice", "validFor": "soon"})
    assert no_valid_for.status_code == 400 and "validFor" in no_valid_for.text
    assert bad.status_code == 400 and "validFor" in bad.text


async def test_the_issuer_can_be_off(store: MemoryStore) -> None:
    transport = httpx.ASGITransport(app=create_app(store, token_issuer=False), client=("127.0.0.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as api:
        response = await api.post("/tokens/user", json={"name": "a", "validFor": "1h"})
    assert response.status_code == 400 and "disabled" in response.json()["details"]


def test_kumactl_keeps_the_auth_of_a_control_plane(tmp_path: Path) -> None:
    config = tmp_path / "config"
    runner = CliRunner()
    base = ["--config-file", str(config), "config", "control-planes", "add", "--name", "a"]
    result = runner.invoke(
        kumactl, [*base, "--address", "https://cp:5682", "--auth-type=tokens", "--auth-conf", "token=T0K"]
    )
    assert result.exit_code == 0, result.output
    server = yaml.safe_load(config.read_text())["controlPlanes"][-1]["coordinates"]["apiServer"]
    assert server == {"url": "https://cp:5682", "authType": "tokens", "authConf": {"token": "T0K"}}
    for bad, message in (
        (["--auth-type=tokens"], "token=YOUR_TOKEN"),
        (["--auth-type=certs", "--auth-conf", "token=x"], '"certs" is not found'),
        (["--auth-conf", "token=x"], "needs --auth-type"),
    ):
        refused = runner.invoke(kumactl, [*base, "--overwrite", "--address", "http://cp:5681", *bad])
        assert refused.exit_code == 1 and message in refused.output


def test_kumactl_signs_user_tokens_offline(tmp_path: Path, store: MemoryStore) -> None:
    issue_user_token(store, User("seed"), 60)
    key = tmp_path / "key.pem"
    key.write_bytes(base64.b64decode(store.get(signing_key_key(1)).spec["data"]))
    args = ["generate", "user-token", "--name", "ops", "--group", "mesh-system:admin", "--valid-for", "1h"]
    result = CliRunner().invoke(kumactl, [*args, "--signing-key-path", str(key), "--kid", "1"])
    assert result.exit_code == 0, result.output
    assert verify_user_token(store, result.output.strip()).is_admin
    missing_kid = CliRunner().invoke(kumactl, [*args, "--signing-key-path", str(key)])
    assert missing_kid.exit_code == 1 and "--kid" in missing_kid.output
