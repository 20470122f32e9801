"""Kuma's inspect API: `GET /meshes/{mesh}/dataplanes/{name}/_rules`, what policies apply to one
proxy and which of them made each conf (see control_plane/policies/core/inspect.py)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane.api.errors import ApiError
from control_plane.policies.core.inspect import dataplane_rules
from control_plane.policies.loading import load_mesh_policies
from control_plane.resources.dataplane import Dataplane
from control_plane.resources.registry import DATAPLANE, MESH
from control_plane.store.base import ResourceStore, dataplane_key, mesh_key

RULES_PATH = f"/{MESH.plural}/{{mesh}}/{DATAPLANE.plural}/{{name}}/_rules"


def inspect_routes(store: ResourceStore) -> list[Route]:
    async def rules(request: Request) -> Response:
        mesh, name = request.path_params["mesh"], request.path_params["name"]
        return JSONResponse(await run_in_threadpool(_rules, store, mesh, name))

    return [Route(RULES_PATH, rules, methods=["GET"])]


def _rules(store: ResourceStore, mesh: str, name: str) -> dict[str, Any]:
    if store.get(mesh_key(mesh)) is None:
        raise ApiError(404, "Could not retrieve a resource", f'mesh "{mesh}" not found')
    stored = store.get(dataplane_key(name, mesh))
    if stored is None:
        raise ApiError(404, "Could not retrieve a resource", f'Dataplane "{name}" in mesh "{mesh}" not found')
    dataplane = Dataplane.model_validate(stored.document())
    return dataplane_rules(load_mesh_policies(store, mesh), dataplane)
