"""The outbound redirect listener (15001) with real Envoy: a call to ANY endpoint's ip:port of a
service is picked by its destination port and IP and sent through the service's chain and cluster,
a destination of no service goes to passthrough.

Needs root (namespaces, iptables); skipped otherwise, but fails when CI=true.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labkit.waiting import eventually
from tests.support.transparent_envoy import (
    APP_PORT,
    Host,
    admin_get,
    counter,
    curl,
    host_subnet,
    mesh_of_two,
    run,
)

pytestmark = pytest.mark.timeout(90)


def add_address(host: Host, address: str) -> None:
    """A second address on the host's veth (the device that holds its first one)."""
    shown = run(*host.exec("ip", "-o", "-4", "addr", "show"))
    device = next(line.split()[1] for line in shown.splitlines() if f" {host.address}/" in line)
    run(*host.exec("ip", "addr", "add", f"{address}/24", "dev", device))


def backend_endpoint(name: str, address: str) -> dict[str, object]:
    """A `backend` endpoint without an Envoy: its ip:port is served by the app of host b."""
    inbound = [{"port": APP_PORT, "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}]
    networking = {"address": address, "inbound": inbound}
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": networking}


async def test_second_endpoint_reaches_the_service_and_unknown_ip_passes_through(envoy_binary: Path) -> None:
    second, unknown = f"{host_subnet()}.3", f"{host_subnet()}.4"  # hosts a and b are .1 and .2
    async with mesh_of_two(envoy_binary, {}, [backend_endpoint("backend-2", second)]) as (web, backend):
        for address in (second, unknown):
            add_address(backend, address)

        async def knows_second() -> bool:
            dump = await admin_get(web, "/config_dump?resource=dynamic_listeners")
            return f'"{second}"' in dump and f"backend::{second}:{APP_PORT}::" in await admin_get(
                web, "/clusters"
            )

        await eventually(knows_second, timeout=15, what="web's Envoy routes the second backend endpoint")
        service = ("http.outbound_backend.downstream_rq_total", "cluster.backend.upstream_rq_total")
        passthrough = "cluster.outbound_passthrough_ipv4.upstream_cx_total"
        before = [await counter(web, name) for name in (*service, passthrough)]
        result = await curl(web, f"http://{second}:{APP_PORT}/")
        assert result.returncode == 0 and result.stdout.startswith("peer="), result
        after = [await counter(web, name) for name in (*service, passthrough)]
        assert after == [before[0] + 1, before[1] + 1, before[2]], (before, after)

        result = await curl(web, f"http://{unknown}:{APP_PORT}/")
        assert result.returncode == 0 and result.stdout.startswith("peer="), result
        final = [await counter(web, name) for name in (*service, passthrough)]
        assert final == [after[0], after[1], after[2] + 1], (after, final)
