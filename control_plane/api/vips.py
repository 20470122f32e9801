"""`GET /meshes/{mesh}/vips`: each service's virtual IP, its DNS names and the ports it answers on
(what `kumactl inspect vips` shows). A service whose last instance is gone keeps its entry, with
`releaseAfter` and no ports, until its grace period ends."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control_plane.api.errors import ApiError
from control_plane.config import DnsServerConfig
from control_plane.dns.allocator import read_vips, service_ports
from control_plane.dns.records import DnsRecords, service_hostnames
from control_plane.dns.vips import VipTable, rfc3339
from control_plane.resources.registry import MESH
from control_plane.store.base import ResourceStore, mesh_key

VIPS_PATH = f"/{MESH.plural}/{{mesh}}/vips"


def vips_routes(store: ResourceStore, dns: DnsServerConfig) -> list[Route]:
    async def vips(request: Request) -> Response:
        mesh = request.path_params["mesh"]
        return JSONResponse(await run_in_threadpool(mesh_vips, store, mesh, dns))

    return [Route(VIPS_PATH, vips, methods=["GET"])]


def mesh_vips(store: ResourceStore, mesh: str, dns: DnsServerConfig) -> dict[str, Any]:
    if store.get(mesh_key(mesh)) is None:
        raise ApiError(404, "Could not retrieve a resource", f'mesh "{mesh}" not found')
    body: dict[str, Any] = {
        "mesh": mesh,
        "domain": dns.domain,
        "serviceVipEnabled": dns.service_vip_enabled,
        "serviceVipPort": dns.service_vip_port,
        "items": [],
    }
    if not dns.service_vip_enabled:
        return body
    table = read_vips(store, mesh)
    dataplanes, _ = store.list("Dataplane", mesh=mesh)
    ports = service_ports(d.spec for d in dataplanes)
    body["items"] = _items(table, ports, dns)
    return body


def _items(table: VipTable, ports: dict[str, set[int]], dns: DnsServerConfig) -> list[dict[str, Any]]:
    names = DnsRecords.of(table.ips(), dns.domain).names
    items = []
    for service, entry in table.entries.items():
        item: dict[str, Any] = {
            "service": service,
            "ip": entry.ip,
            # The service's own name first; a name another service owns is not listed.
            "names": [n for n in service_hostnames(service, dns.domain) if names.get(n) == entry.ip],
            # The generator gives a VIP outbounds only while its service has instances.
            "ports": sorted(ports[service] | {dns.service_vip_port}) if service in ports else [],
        }
        if entry.release_after is not None:
            item["releaseAfter"] = rfc3339(entry.release_after)
        items.append(item)
    return items
