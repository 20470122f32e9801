"""The monitoring assignment server (Kuma's MADS port, 5676): where Prometheus finds every proxy.

- `GET /http_sd`: Prometheus HTTP service discovery (`http_sd_configs`): a JSON list of target
  groups `{"targets": ["<address>:<port>"], "labels": {mesh, dataplane, service, [zone],
  __metrics_path__}}`, read from the store on each request (Prometheus asks every refresh_interval).
- `POST /v3/discovery:monitoringassignments`: Kuma's MADS v1 over REST, as Prometheus'
  `kuma_sd_configs` speaks it: a DiscoveryRequest (JSON) in, a DiscoveryResponse of
  `kuma.observability.v1.MonitoringAssignment`s out; a request naming the current `version_info`
  waits up to `?fetch-timeout=` (default 30 s, Kuma's) for a change, then 304.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane.monitoring.assignments import Assignment, assignments
from control_plane.policies.loading import load_mesh_policies
from control_plane.resources.dataplane import Dataplane
from control_plane.store.base import ResourceStore
from kuma_common.durations import DurationError, parse_duration

MADS_PATH = "/v3/discovery:monitoringassignments"
MADS_TYPE_URL = "type.googleapis.com/kuma.observability.v1.MonitoringAssignment"
DEFAULT_FETCH_TIMEOUT_S = 30.0  # Kuma's defaultFetchTimeout
REFRESH_INTERVAL_S = 1.0  # Kuma's assignmentRefreshInterval


def current_assignments(store: ResourceStore) -> list[Assignment]:
    found: list[Assignment] = []
    meshes, _ = store.list("Mesh")
    for mesh in meshes:
        name = mesh.key.name
        stored, _ = store.list("Dataplane", mesh=name)
        dataplanes = []
        for item in stored:
            try:
                dataplanes.append(Dataplane.model_validate({**item.document()}))
            except ValueError:
                continue  # the reconciler warns
        if dataplanes:
            found.extend(assignments(dataplanes, load_mesh_policies(store, name), mesh.spec.get("metrics")))
    return found


def _mads_response(found: list[Assignment]) -> dict[str, Any]:
    resources = [a.mads() for a in found]
    version = hashlib.sha256(json.dumps(resources, sort_keys=True).encode()).hexdigest()[:16]
    return {"version_info": version, "resources": resources, "type_url": MADS_TYPE_URL, "nonce": version}


def create_monitoring_app(store: ResourceStore) -> Starlette:
    async def http_sd(request: Request) -> Response:
        found = await asyncio.to_thread(current_assignments, store)
        return JSONResponse([a.http_sd() for a in found])

    async def mads(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            known = body.get("version_info", body.get("versionInfo", "")) if isinstance(body, dict) else ""
            timeout = _fetch_timeout(request.query_params.get("fetch-timeout"))
        except (ValueError, DurationError) as exc:
            return JSONResponse({"title": "Could not parse request", "detail": str(exc)}, status_code=400)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            response = _mads_response(await asyncio.to_thread(current_assignments, store))
            if response["version_info"] != known:
                return JSONResponse(response)
            if loop.time() >= deadline:
                return Response(status_code=304)
            await asyncio.sleep(min(REFRESH_INTERVAL_S, max(0.0, deadline - loop.time())))

    return Starlette(routes=[Route("/http_sd", http_sd), Route(MADS_PATH, mads, methods=["POST"])])


def _fetch_timeout(raw: str | None) -> float:
    return DEFAULT_FETCH_TIMEOUT_S if not raw else parse_duration(raw)
