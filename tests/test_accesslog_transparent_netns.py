"""MeshAccessLog on transparent proxies, every part real (two network namespaces, kuma-cp,
`kuma-dp run` as the proxy UID, iptables redirection): a plain curl from a user process on host a
is logged once by a's Envoy on its 15001 listener's `outbound:backend` chain (its own outbound
build, naming web and a's address) and once by b's Envoy on its inbound.

Needs root (namespaces, iptables); skipped otherwise, but fails when CI=true."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from labkit.waiting import wait_until
from tests.support.netns_lab import require_root
from tests.support.transparent_mesh import APP_PORT, TransparentMesh, transparent_mesh

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def mesh() -> Iterator[TransparentMesh]:
    require_root()
    with transparent_mesh() as built:
        yield built


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_transparent_outbound_and_inbound_requests_are_logged(mesh: TransparentMesh) -> None:
    # In the agents' work dirs: the proxy UID can write there.
    outbound, inbound = mesh.a.work_dir / "outbound.log", mesh.b.work_dir / "inbound.log"
    into = inbound
    policies = [
        {
            "type": "MeshAccessLog",
            "mesh": "default",
            "name": "outbound",
            "spec": {
                "targetRef": {"kind": "MeshService", "name": "web"},
                "to": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [
                    {"type": "File", "file": {"path": str(outbound)}}]}}],
            },
        },
        {
            "type": "MeshAccessLog",
            "mesh": "default",
            "name": "inbound",
            "spec": {
                "targetRef": {"kind": "MeshService", "name": "backend"},
                "rules": [{"default": {"backends": [{"type": "File", "file": {"path": str(into), "format": {
                    "type": "Json",
                    "json": [
                        {"key": "path", "value": "%REQ(:PATH)%"},
                        {"key": "status", "value": "%RESPONSE_CODE%"},
                        {"key": "destination", "value": "%KUMA_DESTINATION_SERVICE%"},
                        {"key": "caller", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
                    ],
                }}}]}}],
            },
        },
    ]  # fmt: skip
    mesh.kumactl("apply", "-f", "-", stdin=yaml.safe_dump_all(policies))
    url = f"http://{mesh.b.ip}:{APP_PORT}"
    wait_until(
        lambda: mesh.get(f"{url}/probe") and any("/probe" in line for line in lines(outbound)), timeout=30
    )
    wait_until(lambda: any("/probe" in line for line in lines(inbound)), timeout=15)
    n = 5
    for i in range(n):
        mesh.get(f"{url}/item/{i}")
    mesh.get(f"{url}/marker")
    wait_until(lambda: any("/marker" in line for line in lines(outbound)), timeout=15)
    wait_until(lambda: any("/marker" in line for line in lines(inbound)), timeout=15)
    out_items = [line for line in lines(outbound) if "/item/" in line]
    in_items = [json.loads(line) for line in lines(inbound) if "/item/" in line]
    assert len(out_items) == n, out_items
    for i, line in enumerate(out_items):
        assert f'"GET /item/{i} HTTP/1.1" 200 ' in line, line
        assert f'"web" "backend" "{mesh.a.ip}" "{mesh.b.ip}:{APP_PORT}"' in line, line
    assert in_items == [
        {"path": f"/item/{i}", "status": 200, "destination": "backend", "caller": mesh.a.ip} for i in range(n)
    ]
