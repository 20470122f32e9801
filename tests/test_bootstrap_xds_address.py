"""Where a bootstrap sends Envoy for ADS: the host the agent used and the DP server's port, or
Kuma's KUMA_BOOTSTRAP_SERVER_PARAMS_XDS_HOST / _XDS_PORT (a load balancer in front of several
control-plane instances)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
import yaml

from control_plane.dp_server.bootstrap_api import BootstrapSettings, create_bootstrap_app
from control_plane.store.base import mesh_key
from control_plane.store.memory import MemoryStore
from tests.support.xds_control_plane import WEB


def _xds_address(bootstrap: dict) -> tuple[str, int]:
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"] == "ads_cluster":
            socket = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            return socket["socket_address"]["address"], socket["socket_address"]["port_value"]
    raise AssertionError("no ads_cluster in the bootstrap")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (BootstrapSettings(dp_server_port=5678), ("cp.test", 5678)),
        (BootstrapSettings(dp_server_port=5678, xds_host="lb.test", xds_port=15678), ("lb.test", 15678)),
        (BootstrapSettings(dp_server_port=5678, xds_port=15678), ("cp.test", 15678)),
    ],
)
async def test_the_ads_address_in_the_bootstrap(
    tmp_path: Path, settings: BootstrapSettings, expected: tuple[str, int]
) -> None:
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    request = {
        "mesh": "default",
        "name": "web-1",
        "proxyType": "dataplane",
        "dataplaneResource": json.dumps({"type": "Dataplane", "mesh": "default", **WEB}),
        "caCert": "-----BEGIN CERTIFICATE-----\n",
        "workdir": str(tmp_path),
    }
    transport = httpx.ASGITransport(app=create_bootstrap_app(store, settings), client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="https://cp.test:5678") as client:
        response = await client.post("/bootstrap", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert _xds_address(yaml.safe_load(base64.b64decode(body["bootstrap"]))) == expected
