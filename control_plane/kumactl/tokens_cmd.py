"""`kumactl generate dataplane-token` and `kumactl revoke dataplane-token`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import jwt

from control_plane.kumactl.client import ApiClient
from control_plane.kumactl.context import api_client
from control_plane.kumactl.errors import KumactlError
from control_plane.resources.common import DEFAULT_MESH
from control_plane.tokens import (
    DEFAULT_VALIDITY_S,
    SigningKeyError,
    TokenRequest,
    load_private_key_pem,
    sign_token,
)
from kuma_common.api_paths import REVOCATIONS_PATH, SIGNING_KEYS_PATH, TOKENS_PATH
from kuma_common.durations import DurationError, format_duration, parse_positive_duration

NO_VALID_FOR_WARNING = (
    "Warning: no --valid-for given: the token is valid for {default} (Kuma's default). "
    "Prefer a short validity, e.g. --valid-for 24h, and revoke tokens you no longer use."
)


@click.group()
def generate() -> None:
    """Generate tokens and certificates."""


@click.group()
def revoke() -> None:
    """Revoke tokens."""


@click.group()
def rotate() -> None:
    """Rotate signing keys."""


@rotate.command("dataplane-token-signing-key")
@click.option("-m", "--mesh", default=DEFAULT_MESH, show_default=True, help="mesh whose key to rotate")
@click.pass_context
def rotate_signing_key(ctx: click.Context, mesh: str) -> None:
    """Add a new signing key: new tokens are signed with it; tokens of the older keys stay valid
    until those keys are removed (`kumactl delete dataplane-token-signing-key`)."""
    with api_client(ctx) as client:
        new = client.post(f"{SIGNING_KEYS_PATH}/{mesh}").json()
        kids = client.get(f"{SIGNING_KEYS_PATH}/{mesh}")["kids"]
    older = ", ".join(k for k in kids if k != new["kid"]) or "none"
    click.echo(
        f'mesh "{mesh}": new dataplane token signing key {new["kid"]}; older keys still trusted: {older}'
    )


@click.command("dataplane-token-signing-key")
@click.option("-m", "--mesh", default=DEFAULT_MESH, show_default=True, help="mesh of the key")
@click.option("--kid", required=True, help="the key's id (serial), as in a token's header")
@click.pass_context
def delete_signing_key(ctx: click.Context, mesh: str, kid: str) -> None:
    """Remove a signing key: every token it signed is refused from the next connection."""
    with api_client(ctx) as client:
        client.delete(f"{SIGNING_KEYS_PATH}/{mesh}/{kid}")
    click.echo(f'mesh "{mesh}": dataplane token signing key {kid} removed')


@generate.command("dataplane-token")
@click.option("--name", default="", help="name of the Dataplane (empty: any Dataplane of the mesh)")
@click.option("-m", "--mesh", default=DEFAULT_MESH, show_default=True, help="mesh of the Dataplane")
@click.option("--tag", "tags", multiple=True, help="a tag the Dataplane must carry, key=value (repeatable)")
@click.option("--valid-for", default=None, help="how long the token is valid, e.g. 24h (default: 10 years)")
@click.option(
    "--signing-key-path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="sign offline with this PEM RSA private key instead of asking the control plane",
)
@click.option("--kid", default=None, help="the key id of --signing-key-path (the key's serial)")
@click.pass_context
def dataplane_token(
    ctx: click.Context,
    name: str,
    mesh: str,
    tags: tuple[str, ...],
    valid_for: str | None,
    signing_key_path: Path | None,
    kid: str | None,
) -> None:
    """Generate a dataplane token and print it."""
    parsed_tags = parse_tags(tags)
    seconds = _valid_for(valid_for)
    if valid_for is None:
        click.echo(NO_VALID_FOR_WARNING.format(default=format_duration(DEFAULT_VALIDITY_S)), err=True)
    if signing_key_path is not None:
        if not kid:
            raise KumactlError("--kid is required with --signing-key-path (the serial of the signing key)")
        key = _read_key(signing_key_path)
        click.echo(sign_token(TokenRequest(mesh, name, parsed_tags, seconds), key, kid))
        return
    if kid:
        raise KumactlError("--kid is only used with --signing-key-path")
    body: dict[str, Any] = {"name": name, "mesh": mesh, "tags": parsed_tags, "type": "dataplane"}
    if valid_for is not None:
        body["validFor"] = valid_for
    with api_client(ctx) as client:
        response = _post(client, TOKENS_PATH, body)
    click.echo(response.text.strip())


@revoke.command("dataplane-token")
@click.option(
    "-m", "--mesh", default=None, help=f"mesh of the token (default: the token's, or {DEFAULT_MESH})"
)
@click.option("--jti", default=None, help="the token's id (its jti claim)")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="read the jti (and mesh) from this token",
)
@click.pass_context
def revoke_dataplane_token(
    ctx: click.Context, mesh: str | None, jti: str | None, token_file: Path | None
) -> None:
    """Revoke a dataplane token: it is refused from the next bootstrap, CSR or ADS connection."""
    if (jti is None) == (token_file is None):
        raise KumactlError("give exactly one of --jti and --token-file")
    if token_file is not None:
        jti, token_mesh = _read_token_ids(token_file)
        mesh = mesh or token_mesh
    with api_client(ctx) as client:
        _post(client, REVOCATIONS_PATH, {"mesh": mesh or DEFAULT_MESH, "jti": jti})
    click.echo(f'revoked dataplane token {jti} in mesh "{mesh or DEFAULT_MESH}"')


def parse_tags(tags: tuple[str, ...]) -> dict[str, list[str]]:
    """`--tag k=v` repeated; the same key twice allows either value."""
    parsed: dict[str, list[str]] = {}
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise KumactlError(f"--tag {item!r}: expected key=value, e.g. kuma.io/service=web")
        values = parsed.setdefault(key.strip(), [])
        if value.strip() not in values:
            values.append(value.strip())
    return parsed


def _valid_for(text: str | None) -> float:
    if text is None:
        return DEFAULT_VALIDITY_S
    try:
        return parse_positive_duration(text)
    except DurationError as exc:
        raise KumactlError(f"--valid-for: {exc}") from None


def _read_key(path: Path) -> Any:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise KumactlError(f"--signing-key-path {path}: cannot read: {exc.strerror}") from None
    try:
        return load_private_key_pem(pem)
    except SigningKeyError as exc:
        raise KumactlError(f"--signing-key-path {path}: {exc}") from None


def _read_token_ids(path: Path) -> tuple[str, str | None]:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KumactlError(f"--token-file {path}: cannot read: {exc}") from None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise KumactlError(f"--token-file {path}: is not a dataplane token (JWT)") from None
    jti, mesh = claims.get("jti"), claims.get("Mesh")
    if not isinstance(jti, str) or not jti:
        raise KumactlError(f"--token-file {path}: the token has no jti")
    return jti, mesh if isinstance(mesh, str) and mesh else None


def _post(client: ApiClient, path: str, body: dict[str, Any]) -> Any:
    return client.post(path, body)
