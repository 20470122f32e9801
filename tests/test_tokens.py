"""Dataplane tokens: issue, verify (every rejection class), rotation, revocation, offline signing."""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path

import httpx
import jwt
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from control_plane.api.app import create_app
from control_plane.kumactl.cli import main as kumactl
from control_plane.resources.dataplane import Dataplane
from control_plane.store.base import ResourceKey, mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.tokens import (
    REASONS,
    TokenRejected,
    TokenRequest,
    current_signing_key,
    issue_token,
    remove_signing_key,
    revoke,
    rotate_signing_key,
    sign_token,
    verify_token,
)
from control_plane.tokens.keys import new_private_key, private_key_pem, signing_key_key
from control_plane.tokens.verify import refused_tag


def dataplane(name: str = "web-1", mesh: str = "default", *services: str, **extra_tags: str) -> Dataplane:
    inbound = [
        {"port": 20000 + i, "tags": {"kuma.io/service": service, **extra_tags}}
        for i, service in enumerate(services or ("web",))
    ]
    return Dataplane.model_validate(
        {
            "type": "Dataplane",
            "mesh": mesh,
            "name": name,
            "networking": {"address": "127.0.0.1", "inbound": inbound},
        }
    )


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    for mesh in ("default", "other"):
        store.upsert(mesh_key(mesh), {})
    return store


WEB = TokenRequest("default", "web-1", {"kuma.io/service": ["web"]}, 3600)


def reason(
    store: MemoryStore, token: str | None, dp: Dataplane | None = None, now: float | None = None
) -> str:
    with pytest.raises(TokenRejected) as caught:
        verify_token(store, token, dp or dataplane(), now=now)
    return caught.value.reason


def test_a_token_has_kumas_claims_and_verifies(store: MemoryStore) -> None:
    token = issue_token(store, WEB)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "RS256" and header["kid"] == "1"
    assert {k: claims[k] for k in ("Name", "Mesh", "Tags", "Type")} == {
        "Name": "web-1",
        "Mesh": "default",
        "Tags": {"kuma.io/service": ["web"]},
        "Type": "dataplane",
    }
    assert claims["nbf"] == claims["iat"] - 5 and claims["exp"] == claims["iat"] + 3600
    verified = verify_token(store, token, dataplane())
    assert (verified.name, verified.mesh, verified.jti) == ("web-1", "default", claims["jti"])


def test_the_signing_key_is_created_once_and_stored_as_kuma_does(store: MemoryStore) -> None:
    first = current_signing_key(store, "default")
    assert current_signing_key(store, "default").kid == first.kid == "1"
    stored = store.get(signing_key_key("default", 1))
    assert stored is not None
    assert base64.b64decode(stored.spec["data"]).startswith(b"-----BEGIN PRIVATE KEY-----")


def test_default_validity_is_ten_years(store: MemoryStore) -> None:
    claims = jwt.decode(issue_token(store, TokenRequest("default")), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 10 * 365 * 24 * 3600


def test_missing_and_malformed(store: MemoryStore) -> None:
    assert reason(store, None) == "missing"
    assert reason(store, "") == "missing"
    assert reason(store, "garbage") == "malformed"
    assert reason(store, "a.b.c") == "malformed"
    hs256 = jwt.encode(
        {"Mesh": "default", "Type": "dataplane"}, "s" * 32, algorithm="HS256", headers={"kid": "1"}
    )
    assert reason(store, hs256) == "malformed"
    no_kid = jwt.encode({"Mesh": "default"}, new_private_key(), algorithm="RS256")
    assert reason(store, no_kid) == "malformed"


def test_signed_by_another_key_is_a_bad_signature(store: MemoryStore) -> None:
    issue_token(store, WEB)  # the mesh has key 1
    forged = sign_token(WEB, new_private_key(), "1")
    assert reason(store, forged) == "bad signature"
    other_mesh_key = current_signing_key(store, "other")
    assert reason(store, sign_token(WEB, other_mesh_key.private_key, other_mesh_key.kid)) == "bad signature"


def test_a_kid_the_mesh_does_not_have_is_an_unknown_key(store: MemoryStore) -> None:
    issue_token(store, WEB)
    assert reason(store, sign_token(WEB, new_private_key(), "7")) == "unknown key"


def test_expired_and_not_yet_valid_with_five_seconds_leeway(store: MemoryStore) -> None:
    now = time.time()
    token = issue_token(store, TokenRequest("default", "web-1", {}, 60), now=now)
    verify_token(store, token, dataplane(), now=now + 64)  # within the leeway
    assert reason(store, token, now=now + 66) == "expired"
    verify_token(store, token, dataplane(), now=now - 9)  # nbf = iat - 5, leeway 5
    assert reason(store, token, now=now - 11) == "not yet valid"


def test_revoked(store: MemoryStore) -> None:
    token = issue_token(store, WEB)
    other = issue_token(store, WEB)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert revoke(store, "default", jti) is True
    assert revoke(store, "default", jti) is False
    assert reason(store, token) == "revoked"
    verify_token(store, other, dataplane())
    stored = store.get(ResourceKey("Secret", "default", "dataplane-token-revocations-default"))
    assert stored is not None
    assert base64.b64decode(stored.spec["data"]).decode() == jti


def test_token_for_another_dataplane_or_mesh(store: MemoryStore) -> None:
    token = issue_token(store, WEB)
    assert reason(store, token, dataplane("web-2")) == "wrong dataplane"
    assert reason(store, token, dataplane("web-1", "other")) == "wrong mesh"
    unnamed = issue_token(store, TokenRequest("default", "", {"kuma.io/service": ["web"]}))
    verify_token(store, unnamed, dataplane("web-2"))  # no Name: any Dataplane of the mesh


def test_tags_the_dataplane_lacks_or_values_it_may_not_use(store: MemoryStore) -> None:
    token = issue_token(store, WEB)
    assert reason(store, token, dataplane("web-1", "default", "backend")) == "tags not allowed"
    assert reason(store, token, dataplane("web-1", "default", "web", "backend")) == "tags not allowed"
    zoned = issue_token(store, TokenRequest("default", "web-1", {"zone": ["eu"]}))
    assert reason(store, zoned, dataplane()) == "tags not allowed"
    verify_token(store, zoned, dataplane("web-1", "default", "web", zone="eu"))
    either = issue_token(store, TokenRequest("default", "web-1", {"kuma.io/service": ["web", "api"]}))
    verify_token(store, either, dataplane("web-1", "default", "web"))


def test_every_reason_class_is_exercised_above() -> None:
    assert set(REASONS) == {
        "missing", "malformed", "bad signature", "unknown key", "expired", "not yet valid",
        "revoked", "wrong dataplane", "wrong mesh", "tags not allowed",
    }  # fmt: skip


def test_rotation_keeps_old_tokens_until_their_key_is_removed(store: MemoryStore) -> None:
    old = issue_token(store, WEB)
    assert rotate_signing_key(store, "default").kid == "2"
    new = issue_token(store, WEB)
    assert jwt.get_unverified_header(new)["kid"] == "2"
    verify_token(store, old, dataplane())
    verify_token(store, new, dataplane())
    assert remove_signing_key(store, "default", "1")
    assert reason(store, old) == "unknown key"
    verify_token(store, new, dataplane())


def test_deleting_the_mesh_invalidates_its_tokens(store: MemoryStore) -> None:
    token = issue_token(store, WEB)
    store.delete(mesh_key("default"), cascade_mesh=True)
    assert reason(store, token) == "unknown key"


@given(
    allowed=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, unique=True),
    present=st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1),
)
def test_tag_rule_every_value_on_the_dataplane_must_be_allowed(
    allowed: list[str], present: list[str]
) -> None:
    ok = refused_tag({"t": allowed}, [{"t": v} for v in present]) is None
    assert ok == set(present).issubset(allowed)
    assert refused_tag({"t": allowed}, [{"other": "x"}]) is not None


def test_offline_signing_with_kumactl_verifies_against_the_stored_key(
    store: MemoryStore, tmp_path: Path
) -> None:
    key = current_signing_key(store, "default")
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_key_pem(key.private_key))
    args = ["generate", "dataplane-token", "--name", "web-1", "--tag", "kuma.io/service=web"]
    result = CliRunner().invoke(
        kumactl, [*args, "--valid-for", "1h", "--signing-key-path", str(key_file), "--kid", "1"]
    )
    assert result.exit_code == 0, result.output
    verified = verify_token(store, result.stdout.strip(), dataplane())
    assert verified.tags == {"kuma.io/service": ["web"]}


def test_kumactl_warns_without_valid_for_and_names_bad_inputs(store: MemoryStore, tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_key_pem(new_private_key()))
    offline = ["generate", "dataplane-token", "--signing-key-path", str(key_file)]
    result = CliRunner().invoke(kumactl, [*offline, "--kid", "1"])
    assert result.exit_code == 0
    assert "Warning: no --valid-for given" in result.stderr and "87600h" in result.stderr
    assert result.stdout.count(".") == 2  # just the token
    cases = {
        "--kid is required": [*offline],
        "--tag 'web': expected key=value": [*offline, "--kid", "1", "--tag", "web"],
        "--valid-for: 'soon' is not a duration": [*offline, "--kid", "1", "--valid-for", "soon"],
    }
    for message, argv in cases.items():
        result = CliRunner().invoke(kumactl, argv)
        assert result.exit_code == 1 and message in result.stderr, result.output
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello")
    result = CliRunner().invoke(
        kumactl,
        [
            "generate",
            "dataplane-token",
            "--signing-key-path",
            str(not_a_key),
            "--kid",
            "1",
            "--valid-for",
            "1h",
        ],
    )
    assert result.exit_code == 1 and f"{not_a_key}: is not an unencrypted PEM private key" in result.stderr


def test_rejections_never_log_the_token(store: MemoryStore, caplog: pytest.LogCaptureFixture) -> None:
    from control_plane.dp_server.authn import DpAuthenticator

    caplog.set_level(logging.DEBUG)
    authn = DpAuthenticator(store)
    token = issue_token(store, WEB)
    for dp in (dataplane("web-2"), dataplane("web-1", "other"), dataplane("web-1", "default", "backend")):
        with pytest.raises(TokenRejected):
            authn.authenticate(token, dp, "bootstrap")
    assert "refused" in caplog.text
    signature = token.rsplit(".", 1)[1]
    assert token not in caplog.text and signature not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


def api(store: MemoryStore, client_host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(store), client=(client_host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5681")


async def test_api_issues_tokens_to_admins_only(store: MemoryStore) -> None:
    body = {
        "name": "web-1",
        "mesh": "default",
        "tags": {"kuma.io/service": ["web"]},
        "type": "dataplane",
        "validFor": "24h",
    }
    async with api(store) as client:
        response = await client.post("/tokens/dataplane", json=body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    claims = verify_token(store, response.text, dataplane())
    assert claims.expires - time.time() == pytest.approx(24 * 3600, abs=10)
    async with api(store, "10.1.2.3") as client:
        refused = await client.post("/tokens/dataplane", json=body)
        refused_revoke = await client.post(
            "/tokens/dataplane/revocations", json={"mesh": "default", "jti": "x"}
        )
    assert refused.status_code == 403 and refused_revoke.status_code == 403
    assert "admin" in refused.json()["details"]


async def test_api_names_the_field_at_fault(store: MemoryStore) -> None:
    async with api(store) as client:
        bad_duration = await client.post("/tokens/dataplane", json={"mesh": "default", "validFor": "soon"})
        no_mesh = await client.post("/tokens/dataplane", json={"mesh": "nowhere"})
        bad_tags = await client.post("/tokens/dataplane", json={"tags": {"kuma.io/service": "web"}})
        bad_type = await client.post("/tokens/dataplane", json={"type": "ingress"})
    assert bad_duration.status_code == 400 and bad_duration.json()["causes"][0]["field"] == "validFor"
    assert no_mesh.status_code == 404 and "nowhere" in no_mesh.json()["details"]
    assert bad_tags.status_code == 400 and bad_tags.json()["causes"][0]["field"].startswith("tags")
    assert bad_type.status_code == 400 and bad_type.json()["causes"][0]["field"] == "type"


async def test_api_revokes_by_jti(store: MemoryStore) -> None:
    token = issue_token(store, WEB)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    async with api(store) as client:
        first = await client.post("/tokens/dataplane/revocations", json={"mesh": "default", "jti": jti})
        again = await client.post("/tokens/dataplane/revocations", json={"mesh": "default", "jti": jti})
    assert first.json() == {"mesh": "default", "jti": jti, "alreadyRevoked": False}
    assert again.json()["alreadyRevoked"] is True
    assert reason(store, token) == "revoked"


def test_a_replaced_key_is_not_trusted_from_the_cache(store: MemoryStore) -> None:
    token = issue_token(store, WEB)
    verify_token(store, token, dataplane())  # cached as verified with key 1
    replacement = base64.b64encode(private_key_pem(new_private_key())).decode()
    store.upsert(signing_key_key("default", 1), {"data": replacement})
    assert reason(store, token) == "bad signature"


def test_kumactl_revoke_needs_exactly_one_of_jti_and_token_file(tmp_path: Path) -> None:
    for argv in ([], ["--jti", "a", "--token-file", str(tmp_path / "t")]):
        result = CliRunner().invoke(kumactl, ["revoke", "dataplane-token", *argv])
        assert result.exit_code == 1 and "exactly one of --jti and --token-file" in result.stderr
    (tmp_path / "t").write_text("not a token")
    result = CliRunner().invoke(kumactl, ["revoke", "dataplane-token", "--token-file", str(tmp_path / "t")])
    assert result.exit_code == 1 and "is not a dataplane token" in result.stderr
