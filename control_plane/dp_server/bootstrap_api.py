"""`POST /bootstrap`: the agent sends who it is; the control plane answers with its Envoy bootstrap.

Status codes are the agent's retry contract (design, "Bootstrap contract"): 404 with an empty
body means "not known yet, retry"; 400/422 are final and carry a message naming the input.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass

import yaml
from pydantic import TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane.bootstrap.render import BootstrapParams, dataplane_json, render_bootstrap
from control_plane.dp_server.authn import DpAuthenticator, unauthorized
from control_plane.dp_server.recent_dataplanes import RecentDataplanes
from control_plane.policies.core.parts import ProxyInfo
from control_plane.policies.meshaccesslog.formats import source_metadata
from control_plane.resources.common import format_validation_error
from control_plane.resources.dataplane import Dataplane
from control_plane.resources.registry import DATAPLANE, InvalidResource, parse_resource
from control_plane.store.base import ResourceStore, dataplane_key, mesh_key
from control_plane.tokens.verify import TokenRejected
from control_plane.xds.binding import BindingConflict, check_binding
from kuma_common import dp_contract as contract
from kuma_common import safe_json, safe_yaml
from kuma_common.dp_contract import BootstrapRequest

log = logging.getLogger("kuma-cp.bootstrap")


# The agent's request body (the contract's dataclass), validated field by field; unknown fields
# are ignored.
_REQUEST = TypeAdapter(BootstrapRequest)


class BootstrapError(Exception):
    def __init__(self, status: int, title: str, causes: list[dict[str, str]] | None = None) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.causes = causes or []

    def response(self) -> Response:
        if self.status == 404:
            return Response(status_code=404)  # empty body: "retry later"
        body = {"title": self.title, "details": self.title, "causes": self.causes}
        return JSONResponse(body, status_code=self.status)


@dataclass(frozen=True)
class BootstrapSettings:
    dp_server_port: int
    # Kuma's bootstrapServer.params.xdsHost / xdsPort: where Envoy reaches the ADS server, when not
    # where the agent reached this server (host) and this server's port, e.g. a load balancer in
    # front of several control-plane instances.
    xds_host: str = ""
    xds_port: int = 0


def create_bootstrap_app(
    store: ResourceStore,
    settings: BootstrapSettings,
    authenticator: DpAuthenticator | None = None,
    recent: RecentDataplanes | None = None,
) -> Starlette:
    """`authenticator` None: no token check (tests of the rendering); the runtime always passes one.
    `recent` remembers authenticated Dataplanes for `POST /certificate`."""

    async def bootstrap(request: Request) -> Response:
        raw = await request.body()
        # Parsing and rendering are CPU work on documents up to the body limit: off the event loop,
        # which also serves ADS and the other requests.
        return await asyncio.to_thread(handle, raw, request.url.hostname, _client(request))

    def handle(raw_body: bytes, cp_host: str | None, client: str) -> Response:
        try:
            body = _parse_request(raw_body)
            dataplane, raw = _authenticated_dataplane(store, body, authenticator)
            if raw is not None:
                _check_binding(store, dataplane)
            yaml_text = render_bootstrap(_params(body, dataplane, raw, cp_host, settings))
        except BootstrapError as err:
            log.info("bootstrap from %s refused (%d): %s", client, err.status, err.title)
            return err.response()
        except TokenRejected as exc:
            return unauthorized(exc)
        if recent is not None and raw is not None:
            recent.remember(dataplane)
        encoded = base64.b64encode(yaml_text.encode()).decode()
        sidecar = {
            # Kuma's field: an agent started with --name only learns here that it is transparent
            # (and so runs its DNS server).
            "networking": {
                "address": dataplane.networking.address,
                contract.TRANSPARENT_PROXY_FIELD: dataplane.networking.transparentProxying is not None,
            },
            "metrics": {"aggregate": []},
        }
        return JSONResponse(
            {contract.BOOTSTRAP_FIELD: encoded, contract.SIDECAR_CONFIGURATION_FIELD: sidecar}
        )

    return Starlette(routes=[Route(contract.BOOTSTRAP_PATH, bootstrap, methods=["POST"])])


def _check_binding(store: ResourceStore, sent: Dataplane) -> None:
    """409 when the agent's Dataplane would change an admin-applied one (control_plane/xds/binding.py)."""
    try:
        check_binding(store, sent)
    except BindingConflict as exc:
        raise BootstrapError(409, str(exc), [{"field": "dataplaneResource", "message": str(exc)}]) from None


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _parse_request(raw: bytes) -> BootstrapRequest:
    try:
        doc = safe_json.loads(raw)  # a RecursionError (too deep) comes out as ValueError
    except ValueError as exc:
        raise BootstrapError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):  # the words pydantic used when the request was a pydantic model
        message = "Input should be a valid dictionary or instance of BootstrapRequest"
        raise BootstrapError(400, "invalid bootstrap request", [{"field": "(root)", "message": message}])
    try:
        return _REQUEST.validate_python(doc)
    except ValidationError as exc:
        raise BootstrapError(400, "invalid bootstrap request", format_validation_error(exc)) from None


def _authenticated_dataplane(
    store: ResourceStore, req: BootstrapRequest, authenticator: DpAuthenticator | None
) -> tuple[Dataplane, str | None]:
    """The token first (nothing the caller sent is parsed or looked up for an unauthenticated
    caller), then the Dataplane, then whether the token proves it."""
    if req.proxyType != contract.DATAPLANE_PROXY_TYPE:
        raise BootstrapError(
            422, f"proxyType {req.proxyType!r} is not supported; use '{contract.DATAPLANE_PROXY_TYPE}'"
        )
    token = None
    if authenticator is not None:
        who = f"{req.mesh or 'default'}/{req.name or '(in dataplaneResource)'}"
        token = authenticator.authenticate_caller(req.dataplaneToken or None, "bootstrap", who)
        if not req.dataplaneResource:
            authenticator.authorize_names(token, req.mesh or "default", req.name, "bootstrap")
    dataplane, raw = _resolve_dataplane(store, req)
    if authenticator is not None:
        authenticator.authorize(token, dataplane, "bootstrap")
    _check_mesh_exists(store, dataplane)  # after the token: a caller learns only of its own mesh
    return dataplane, raw


def _resolve_dataplane(store: ResourceStore, req: BootstrapRequest) -> tuple[Dataplane, str | None]:
    """The Dataplane the agent sent (universal) or the one in the store; and its JSON to embed."""
    if req.dataplaneResource:
        dataplane = _validate_sent_dataplane(req)
    else:
        if not req.name:
            raise BootstrapError(422, "name is required when no dataplane resource is sent")
        stored = store.get(dataplane_key(req.name, req.mesh or "default"))
        if stored is None:
            raise BootstrapError(404, "dataplane not found")
        dataplane = Dataplane.model_validate(stored.document())
    if not req.dataplaneResource:
        return dataplane, None
    return dataplane, dataplane_json(dataplane.model_dump(mode="json", exclude_none=True))


def _check_mesh_exists(store: ResourceStore, dataplane: Dataplane) -> None:
    if store.get(mesh_key(dataplane.mesh)) is None:
        raise BootstrapError(
            422,
            f'mesh "{dataplane.mesh}" does not exist; create it first (kumactl apply a Mesh)',
            [{"field": "mesh", "message": "mesh does not exist"}],
        )


def _validate_sent_dataplane(req: BootstrapRequest) -> Dataplane:
    try:
        doc = safe_yaml.safe_load(req.dataplaneResource)  # limits: aliases, depth, size
    except yaml.YAMLError as exc:
        raise BootstrapError(422, f"dataplaneResource is not valid YAML/JSON: {exc}") from None
    except RecursionError:
        raise BootstrapError(422, "dataplaneResource is not valid YAML/JSON: nested too deeply") from None
    if isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k not in ("creationTime", "modificationTime")}
    try:
        dataplane = parse_resource(doc, DATAPLANE)
    except InvalidResource as exc:
        raise BootstrapError(422, f"dataplane resource is not valid: {exc}", exc.causes) from None
    assert isinstance(dataplane, Dataplane)
    for field, sent, declared in (("name", req.name, dataplane.name), ("mesh", req.mesh, dataplane.mesh)):
        if sent and sent != declared:
            raise BootstrapError(
                422,
                f"{field} {sent!r} given to kuma-dp does not match the dataplane resource's {declared!r}",
                [{"field": field, "message": "does not match the dataplane resource"}],
            )
    return dataplane


def _params(
    req: BootstrapRequest, dp: Dataplane, raw: str | None, cp_host: str | None, settings: BootstrapSettings
) -> BootstrapParams:
    if not req.caCert:
        raise BootstrapError(
            422, "caCert is required: the PEM of the CA the agent trusts for the control plane"
        )
    if not req.workdir.startswith("/"):
        raise BootstrapError(422, "workdir must be an absolute path")
    admin = dp.networking.admin
    return BootstrapParams(
        mesh=dp.mesh,
        name=dp.name,
        service=dp.services[0],
        dataplane_json=raw,
        cp_host=settings.xds_host or cp_host or "localhost",
        cp_port=settings.xds_port or settings.dp_server_port,
        ca_cert=req.caCert,
        workdir=req.workdir,
        admin_port=admin.port if admin else None,
        token=req.dataplaneToken or None,
        proxy_type=req.proxyType,
        version=req.version,
        features=tuple(req.features),
        dynamic_metadata=req.dynamicMetadata,
        readiness_port=req.readinessPort,
        access_log_source=_access_log_source(dp),
    )


def _access_log_source(dp: Dataplane) -> dict[str, str]:
    proxy = ProxyInfo.of(dp, None)  # Kuma's address (advertised first), service and zone
    return source_metadata(proxy.address, proxy.service, proxy.zone)
