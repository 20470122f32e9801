"""Dataplane authentication, one object for `/bootstrap`, `POST /certificate` and every ADS stream.

Mode `dpToken` (the default, KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE) verifies the dataplane token
against the Dataplane presenting it; `none` accepts everyone. A client learns only the reason
class; the log gets the dataplane, the class and a detail; the token itself is never logged.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from envoy.config.core.v3 import base_pb2
from starlette.responses import JSONResponse

from control_plane.resources.dataplane import Dataplane
from control_plane.store.base import ResourceStore, dataplane_key
from control_plane.tokens.verify import TokenRejected, VerifiedToken, authenticate_token, check_dataplane
from control_plane.xds.lifecycle import metadata_dataplane
from control_plane.xds.names import InvalidNodeId, parse_node_id
from control_plane.xds.server import StreamRejected
from kuma_common.dp_contract import TOKEN_HEADER

log = logging.getLogger("kuma-cp.authn")

UNAUTHORIZED_TITLE = "invalid dataplane token"
_BEARER = "bearer "


def token_from_header(value: str | None) -> str | None:
    """The token of an `authorization` value: raw (as Envoy sends it) or with a `Bearer ` prefix."""
    if not value:
        return None
    value = value.strip()
    return value[len(_BEARER) :].strip() if value.lower().startswith(_BEARER) else value


def unauthorized(rejection: TokenRejected) -> JSONResponse:
    return JSONResponse({"title": UNAUTHORIZED_TITLE, "details": rejection.reason}, status_code=401)


class DpAuthenticator:
    def __init__(self, store: ResourceStore, mode: str = "dpToken") -> None:
        if mode not in ("dpToken", "none"):
            raise ValueError(f"unknown dataplane authentication {mode!r} (dpToken or none)")
        self._store = store
        self.enabled = mode == "dpToken"

    def authenticate(self, token: str | None, dataplane: Dataplane, where: str) -> VerifiedToken | None:
        """The verified token (None when authentication is off); TokenRejected, logged, otherwise."""
        verified = self.authenticate_caller(token, where, f"{dataplane.mesh}/{dataplane.name}")
        self.authorize(verified, dataplane, where)
        return verified

    def authenticate_caller(self, token: str | None, where: str, who: str) -> VerifiedToken | None:
        """Step one, before anything else the caller sent is parsed or looked up: the token is
        signed by its mesh's key, in time, not revoked. So every unauthenticated caller gets the
        same answer whatever it asks about (a known, an unknown Dataplane, an absent mesh)."""
        if not self.enabled:
            return None
        try:
            return authenticate_token(self._store, token)
        except TokenRejected as exc:
            self._log_refusal(where, who, exc)
            raise

    def authorize_names(self, token: VerifiedToken | None, mesh: str, name: str, where: str) -> None:
        """The names asked for are within the token's: checked before the store is looked at."""
        if token is None:
            return
        try:
            if token.mesh != mesh:
                raise TokenRejected("wrong mesh", f"token for mesh {token.mesh!r} used in mesh {mesh!r}")
            if token.name and name and token.name != name:
                raise TokenRejected("wrong dataplane", f"token for dataplane {token.name!r} used by {name!r}")
        except TokenRejected as exc:
            self._log_refusal(where, f"{mesh}/{name}", exc)
            raise

    def authorize(self, token: VerifiedToken | None, dataplane: Dataplane, where: str) -> None:
        """Step two: the authenticated token proves this Dataplane (mesh, name, tags)."""
        if token is None:
            return
        try:
            check_dataplane(token, dataplane)
        except TokenRejected as exc:
            self._log_refusal(where, f"{dataplane.mesh}/{dataplane.name}", exc)
            raise

    @staticmethod
    def _log_refusal(where: str, who: str, exc: TokenRejected) -> None:
        log.warning("%s of dataplane %s refused: %s (%s)", where, who, exc.reason, exc.detail)

    async def authenticate_stream(self, node: base_pb2.Node, metadata: dict[str, str]) -> None:
        """The XdsComponent hook: runs before the lifecycle registers anything. The token is
        checked first, so an unauthenticated stream learns nothing of what the store holds."""
        if not self.enabled:
            return
        token = token_from_header(metadata.get(TOKEN_HEADER))
        try:
            verified = await asyncio.to_thread(self.authenticate_caller, token, "ADS stream", node.id)
            dataplane = await asyncio.to_thread(self._stream_dataplane, node, verified)
            self.authorize(verified, dataplane, "ADS stream")
        except TokenRejected as exc:
            raise StreamRejected(grpc.StatusCode.UNAUTHENTICATED, exc.reason) from None

    def _stream_dataplane(self, node: base_pb2.Node, token: VerifiedToken | None) -> Dataplane:
        """What the token must prove: the Dataplane the proxy sent, or the stored one."""
        sent = metadata_dataplane(node)
        if sent is not None:
            return sent
        try:
            mesh, name = parse_node_id(node.id)
        except InvalidNodeId as exc:
            raise StreamRejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        self.authorize_names(token, mesh, name, "ADS stream")
        stored = self._store.get(dataplane_key(name, mesh))
        if stored is None:
            # Nothing to check the token against yet (a Dataplane applied with kumactl later):
            # UNAVAILABLE makes Envoy retry.
            raise StreamRejected(
                grpc.StatusCode.UNAVAILABLE, f"dataplane {mesh}/{name} is not known yet; retrying"
            )
        return Dataplane.model_validate(stored.document())
