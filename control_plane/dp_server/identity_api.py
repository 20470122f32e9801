"""`POST /certificate`: a proxy's CSR, checked against its token and Dataplane, signed by the mesh CA.

Status codes (docs/identity.md): 200 the certificate; 404 with an empty body, the Dataplane is not
known yet (retry); 401 the token; 403 the CSR asks for what the token does not prove (logged at
WARNING with what was asked); 400 a malformed body; 422 a CSR that cannot be used.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane.ca.csr import CsrForbidden, CsrInvalid
from control_plane.ca.issue import issue_certificate
from control_plane.diagnostics.metrics import CpMetrics
from control_plane.dp_server.authn import DpAuthenticator, token_from_header, unauthorized
from control_plane.dp_server.recent_dataplanes import RecentDataplanes
from control_plane.resources.dataplane import Dataplane
from control_plane.resources.registry import DATAPLANE, parse_resource
from control_plane.store.base import ResourceStore, dataplane_key
from control_plane.tokens.verify import TokenRejected, allowed_services
from control_plane.xds.binding import BindingConflict, check_binding
from kuma_common import dp_contract as contract
from kuma_common import safe_json

log = logging.getLogger("kuma-cp.identity")

_FIELDS = ("mesh", "name", "csr")  # required; `dataplane` is optional
_DATAPLANE_FIELD = "dataplane"


class _Refused(Exception):
    def __init__(self, status: int, title: str, details: str = "") -> None:
        super().__init__(title)
        self.status, self.title, self.details = status, title, details or title

    def response(self) -> Response:
        return JSONResponse({"title": self.title, "details": self.details}, status_code=self.status)


def certificate_routes(
    store: ResourceStore, authenticator: DpAuthenticator, recent: RecentDataplanes, metrics: CpMetrics
) -> list[Route]:
    async def certificate(request: Request) -> Response:
        raw = await request.body()
        header = request.headers.get(contract.TOKEN_HEADER)
        # Token checks, store reads and signing: off the event loop, which also serves ADS.
        return await asyncio.to_thread(handle, raw, token_from_header(header))

    def handle(raw_body: bytes, presented: str | None) -> Response:
        try:
            mesh, name, csr, sent = _parse_body(raw_body)
        except _Refused as err:
            return err.response()
        where = "certificate request"
        try:
            # The token before the store: an unauthenticated caller learns nothing of what exists.
            token = authenticator.authenticate_caller(presented, where, f"{mesh}/{name}")
            authenticator.authorize_names(token, mesh, name, where)
            dataplane = _dataplane(store, recent, mesh, name, _sent_dataplane(sent, mesh, name))
            if dataplane is None:
                return Response(status_code=404)  # empty body: "not known yet, retry"
            authenticator.authorize(token, dataplane, where)
        except TokenRejected as exc:
            return unauthorized(exc)
        except BindingConflict as exc:
            return _Refused(409, "dataplane conflicts with the applied one", str(exc)).response()
        except _Refused as err:  # the Dataplane sent with the request is not valid
            return err.response()
        try:
            issued = issue_certificate(store, mesh, allowed_services(token, dataplane), csr)
        except CsrInvalid as exc:
            return _Refused(422, "invalid certificate signing request", str(exc)).response()
        except CsrForbidden as exc:
            log.warning("certificate for dataplane %s/%s refused: %s", mesh, name, exc)
            return _Refused(403, "certificate signing request refused", str(exc)).response()
        metrics.cert_generation.labels(mesh).inc()
        log.debug("certificate %x issued to %s/%s", issued.serial, mesh, name)
        return JSONResponse(issued.response())

    return [Route(contract.CERTIFICATE_PATH, certificate, methods=["POST"])]


def _parse_body(raw: bytes) -> tuple[str, str, str, Any]:
    try:
        doc = safe_json.loads(raw)  # a RecursionError (too deep) comes out as ValueError
    except ValueError as exc:
        raise _Refused(400, "request body is not valid JSON", str(exc)) from None
    if not isinstance(doc, dict):
        raise _Refused(400, "request body must be a JSON object with mesh, name and csr")
    values = []
    for field in _FIELDS:
        value = doc.get(field)
        if not isinstance(value, str) or not value:
            raise _Refused(400, f"{field} is required (a non-empty string)")
        values.append(value)
    return values[0], values[1], values[2], doc.get(_DATAPLANE_FIELD)


def _sent_dataplane(raw: Any, mesh: str, name: str) -> Dataplane | None:
    """The optional Dataplane the agent sent at /bootstrap, validated as there."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise _Refused(400, f"{_DATAPLANE_FIELD} must be the Dataplane resource as a JSON string")
    try:
        model = parse_resource(safe_json.loads(raw), DATAPLANE)
    except ValueError as exc:  # InvalidResource included: it names the fields
        raise _Refused(400, f"{_DATAPLANE_FIELD} is not a valid Dataplane", str(exc)) from None
    assert isinstance(model, Dataplane)
    if (model.mesh, model.name) != (mesh, name):
        raise _Refused(400, f"{_DATAPLANE_FIELD} names {model.mesh}/{model.name}, the request {mesh}/{name}")
    return model


def _dataplane(
    store: ResourceStore, recent: RecentDataplanes, mesh: str, name: str, sent: Dataplane | None = None
) -> Dataplane | None:
    """What the certificate is for: the Dataplane the agent sent (with this request, or at
    bootstrap to this instance), checked again against an admin-applied one (applied since,
    perhaps: control_plane/xds/binding.py), else the stored one. The token is checked against
    whichever it is, as at bootstrap."""
    sent = sent or recent.get(mesh, name)
    if sent is None:
        return _stored_dataplane(store, mesh, name)
    check_binding(store, sent)
    return sent


def _stored_dataplane(store: ResourceStore, mesh: str, name: str) -> Dataplane | None:
    stored = store.get(dataplane_key(name, mesh))
    return None if stored is None else Dataplane.model_validate(stored.document())
