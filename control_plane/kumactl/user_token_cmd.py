"""`kumactl generate user-token`: a token proving a user (and groups) to the admin API (Kuma's)."""

from __future__ import annotations

from pathlib import Path

import click

from control_plane.kumactl.context import api_client
from control_plane.kumactl.errors import KumactlError
from control_plane.tokens import SigningKeyError
from control_plane.tokens.user import User, sign_user_token
from kuma_common.api_paths import USER_TOKENS_PATH
from kuma_common.durations import DurationError, parse_positive_duration


@click.command("user-token")
@click.option("--name", required=True, help="name of the user")
@click.option(
    "--group", "groups", multiple=True, help="group of the user (repeatable), e.g. mesh-system:admin"
)
@click.option("--valid-for", required=True, help='how long the token is valid (for example "24h")')
@click.option(
    "--signing-key-path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="sign offline with this PEM RSA private key instead of asking the control plane",
)
@click.option("--kid", default=None, help="the key id of --signing-key-path (required with it)")
@click.pass_context
def user_token(
    ctx: click.Context,
    name: str,
    groups: tuple[str, ...],
    valid_for: str,
    signing_key_path: Path | None,
    kid: str | None,
) -> None:
    """Generate a user token (the control plane issues it; only an admin may ask)."""
    try:
        seconds = parse_positive_duration(valid_for)
    except DurationError as exc:
        raise KumactlError(f"--valid-for: {exc}") from None
    if signing_key_path is not None:
        if not kid:
            raise KumactlError("--kid is required when --signing-key-path is used")
        try:
            token = sign_user_token(User(name, groups), seconds, signing_key_path.read_bytes(), kid)
        except OSError as exc:
            raise KumactlError(
                f"--signing-key-path {signing_key_path}: cannot read: {exc.strerror}"
            ) from None
        except SigningKeyError as exc:
            raise KumactlError(f"--signing-key-path {signing_key_path}: {exc}") from None
        click.echo(token)
        return
    if kid:
        raise KumactlError("--kid is only used with --signing-key-path")
    body = {"name": name, "groups": list(groups), "validFor": valid_for}
    with api_client(ctx) as client:
        response = client.post(USER_TOKENS_PATH, body, what="failed to generate a user token")
    click.echo(response.text.strip())
