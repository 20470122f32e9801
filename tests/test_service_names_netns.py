"""Service names end to end, every part real: two network namespaces ("hosts"), the control plane
on host a, `kumactl install transparent-proxy` and `kuma-dp run` on each, an app on each. A user
process on host a reaches backend by its virtual IP, on backend's own port and on port 80, through
both Envoys, and with mTLS as web.

Needs root (namespaces, iptables); skipped otherwise, but fails when CI=true.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator

import pytest
import yaml

from labkit.lab import ALLOW_ALL_PERMISSION
from labkit.waiting import wait_until
from tests.support.netns_lab import require_root
from tests.support.transparent_mesh import APP_PORT, USER_UID, TransparentMesh, transparent_mesh

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def mesh() -> Iterator[TransparentMesh]:
    require_root()
    with transparent_mesh() as built:
        # As on any VM or pod: a default route, so a connect() to a VIP reaches iptables' OUTPUT
        # chain instead of failing with "network unreachable". It points at the other namespace.
        for host, peer in ((built.a, built.b), (built.b, built.a)):
            built.lab.run(host.ns, ["ip", "route", "add", "default", "via", peer.ip], check=True)
        yield built


def vip_of(mesh: TransparentMesh, service: str) -> str:
    def found() -> str | None:
        body = json.loads(mesh.kumactl("inspect", "vips", "-o", "json"))
        return next((i["ip"] for i in body["items"] if i["service"] == service), None)

    return wait_until(found, timeout=10)


def test_backend_is_reached_on_its_vip_by_its_port_and_port_80_with_mtls(mesh: TransparentMesh) -> None:
    vip = vip_of(mesh, "backend")
    assert ipaddress.ip_address(vip) in ipaddress.ip_network("240.0.0.0/4")
    for url in (f"http://{vip}:{APP_PORT}/", f"http://{vip}/"):
        wait_until(lambda url=url: mesh.curl(mesh.a, url, uid=USER_UID).returncode == 0, timeout=10)
        # Delivered by b's Envoy to b's app (from 127.0.0.6), after a's Envoy picked backend.
        assert f"peer=127.0.0.6 port={APP_PORT}" in mesh.get(url)

    backend = {"name": "ca-1", "type": "builtin"}
    mtls_on = {"type": "Mesh", "name": "default", "mtls": {"enabledBackend": "ca-1", "backends": [backend]}}
    mesh.kumactl("apply", "-f", "-", stdin=yaml.safe_dump(mtls_on) + "---" + ALLOW_ALL_PERMISSION)
    wait_until(lambda: "URI=spiffe://default/web" in mesh.get(f"http://{vip}/"), timeout=10)
    assert "URI=spiffe://default/web" in mesh.get(f"http://{vip}:{APP_PORT}/")
