"""The REST API application: Kuma's paths, generated from the resource registry."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane.api.access import Authenticate
from control_plane.api.errors import ApiError, handle_api_error, handle_http_exception, handle_unexpected
from control_plane.api.inspect import inspect_routes
from control_plane.api.resources import ResourceEndpoints
from control_plane.api.tokens import token_routes
from control_plane.api.users import user_routes
from control_plane.api.vips import vips_routes
from control_plane.config import DnsServerConfig, default_config
from control_plane.resources.manager import ResourceManager
from control_plane.resources.registry import MESH, TYPES, ResourceType
from control_plane.store.base import ResourceStore
from kuma_common.version import BASED_ON_KUMA, __version__

PRODUCT = "kuma-py"
TAGLINE = "Kuma"  # Kuma's kumactl checks this to know it talks to a Kuma control plane


def product_version() -> str:
    return __version__


async def index(request: Request) -> Response:
    return JSONResponse(
        {
            "hostname": socket.gethostname(),
            "tagline": TAGLINE,
            "version": product_version(),
            "basedOnKuma": BASED_ON_KUMA,
            "product": PRODUCT,
        }
    )


Endpoint = Callable[[Request], Awaitable[Response]]


def by_method(path: str, handlers: dict[str, Endpoint]) -> Route:
    """One route per path, so a 405 lists every allowed method in its Allow header."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return Route(path, endpoint, methods=list(handlers))


def resource_routes(endpoints: ResourceEndpoints) -> list[Route]:
    """`/{plural}[/{name}]` for global types; `/meshes/{mesh}/{plural}[/{name}]` plus an
    all-meshes `/{plural}` list for mesh-scoped ones."""
    rtype: ResourceType = endpoints.rtype
    if rtype.mesh_scoped:
        base = f"/{MESH.plural}/{{mesh}}/{rtype.plural}"
        routes = [by_method(f"/{rtype.plural}", {"GET": endpoints.list_items})]
    else:
        base = f"/{rtype.plural}"
        routes = []
    routes.append(by_method(base, {"GET": endpoints.list_items}))
    routes.append(
        by_method(
            f"{base}/{{name}}", {"GET": endpoints.get, "PUT": endpoints.put, "DELETE": endpoints.delete}
        )
    )
    return routes


def create_app(
    store: ResourceStore,
    *,
    localhost_is_admin: bool = True,
    user_tokens: bool = True,
    token_issuer: bool = True,
    dns: DnsServerConfig | None = None,
) -> Starlette:
    """`dns`: the service names settings the VIPs view reports with (the defaults if None);
    `user_tokens`: authn type `tokens` (Bearer user tokens); `token_issuer`: `POST /tokens/user`."""
    routes = [Route("/", index, methods=["GET"])]
    manager = store if isinstance(store, ResourceManager) else ResourceManager(store)
    store = manager  # every write of the API follows the resource rules
    for rtype in TYPES.values():
        routes.extend(resource_routes(ResourceEndpoints(manager, rtype)))
    routes.extend(token_routes(store))
    routes.extend(user_routes(store, token_issuer))
    routes.extend(inspect_routes(store))
    routes.extend(vips_routes(store, dns or default_config().dns_server))
    authn = Middleware(Authenticate, store=store, localhost_is_admin=localhost_is_admin, tokens=user_tokens)
    return Starlette(
        routes=routes,
        middleware=[authn],
        exception_handlers={
            ApiError: handle_api_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
