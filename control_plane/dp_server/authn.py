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
from control_plane.tokens.verify import TokenRejected, VerifiedToken, verify_token
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
        if not self.enabled:
            return None
        try:
            return verify_token(self._store, token, dataplane)
        except TokenRejected as exc:
            log.warning(
                "%s of dataplane %s/%s refused: %s (%s)",
                where,
                dataplane.mesh,
                dataplane.name,
                exc.reason,
                exc.detail,
            )
            raise

    async def authenticate_stream(self, node: base_pb2.Node, metadata: dict[str, str]) -> None:
        """The XdsComponent hook: runs before the lifecycle registers anything."""
        if not self.enabled:
            return
        dataplane = await asyncio.to_thread(self._stream_dataplane, node)
        token = token_from_header(metadata.get(TOKEN_HEADER))
        try:
            await asyncio.to_thread(self.authenticate, token, dataplane, "ADS stream")
        except TokenRejected as exc:
            raise StreamRejected(grpc.StatusCode.UNAUTHENTICATED, exc.reason) from None

    def _stream_dataplane(self, node: base_pb2.Node) -> Dataplane:
        """What the token must prove: the Dataplane the proxy sent, or the stored one."""
        sent = metadata_dataplane(node)
        if sent is not None:
            return sent
        try:
            mesh, name = parse_node_id(node.id)
        except InvalidNodeId as exc:
            raise StreamRejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        stored = self._store.get(dataplane_key(name, mesh))
        if stored is None:
            # Nothing to check the token against yet (a Dataplane applied with kumactl later):
            # UNAVAILABLE makes Envoy retry.
            raise StreamRejected(
                grpc.StatusCode.UNAVAILABLE, f"dataplane {mesh}/{name} is not known yet; retrying"
            )
        return Dataplane.model_validate(stored.document())
