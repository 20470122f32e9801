"""Transparent proxying end to end, every part real: two network namespaces ("hosts") joined by a
veth pair; the control plane runs on host a; on each host `kumactl install transparent-proxy`
installs the rules, `kuma-dp run` (as the proxy UID 5678) starts Envoy, and an app serves HTTP.
A plain `curl http://<other host>:8080/` from a user process crosses both Envoys without knowing.

Needs root (namespaces, iptables); skipped otherwise, but fails when CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from labkit.lab import ALLOW_ALL_PERMISSION
from labkit.waiting import wait_until
from tests.support.netns_lab import require_root
from tests.support.transparent_mesh import (
    APP_PORT,
    BIN,
    EXCLUDED_PORT,
    PROXY_UID,
    UNDECLARED_PORT,
    USER_UID,
    TransparentMesh,
    transparent_mesh,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def mesh() -> Iterator[TransparentMesh]:
    require_root()
    with transparent_mesh() as built:
        yield built


def test_plain_curl_crosses_both_envoys_then_over_mtls(mesh: TransparentMesh) -> None:
    url = f"http://{mesh.b.ip}:{APP_PORT}/"
    a_before = mesh.a.stat("cluster.backend.upstream_rq_completed")
    b_before = mesh.b.stat(f"http.inbound_{mesh.b.ip.replace('.', '_')}_{APP_PORT}.downstream_rq_completed")
    body = mesh.get(url)
    assert f"peer=127.0.0.6 port={APP_PORT}" in body  # delivered by b's Envoy, not by a's socket
    assert mesh.a.stat("cluster.backend.upstream_rq_completed") == a_before + 1
    assert (
        mesh.b.stat(f"http.inbound_{mesh.b.ip.replace('.', '_')}_{APP_PORT}.downstream_rq_completed")
        == b_before + 1
    )

    # Turn mTLS on: the same plain curl now arrives with web's SPIFFE identity.
    backend = {"name": "ca-1", "type": "builtin"}
    mtls_on = {"type": "Mesh", "name": "default", "mtls": {"enabledBackend": "ca-1", "backends": [backend]}}
    mesh.kumactl("apply", "-f", "-", stdin=yaml.safe_dump(mtls_on) + "---" + ALLOW_ALL_PERMISSION)
    wait_until(lambda: "xfcc=" in mesh.get(url), timeout=10)
    assert "URI=spiffe://default/web" in mesh.get(url)

    # STRICT: a process that skips a's Envoy (the proxy's own UID is never redirected) is refused
    # by b, and the undeclared port is closed.
    assert mesh.curl(mesh.a, url, uid=PROXY_UID).returncode != 0
    assert mesh.curl(mesh.a, f"http://{mesh.b.ip}:{UNDECLARED_PORT}/", uid=USER_UID).returncode != 0


def test_passthrough_and_exclusions(mesh: TransparentMesh) -> None:
    passthrough = "cluster.outbound_passthrough_ipv4.upstream_cx_total"
    # An undeclared port is passed through a's Envoy (mesh passthrough), reaching b's app via b's.
    before = mesh.a.stat(passthrough)
    assert f"port={UNDECLARED_PORT}" in mesh.get(f"http://{mesh.b.ip}:{UNDECLARED_PORT}/")
    assert mesh.a.stat(passthrough) == before + 1
    # The excluded port goes direct both ways: a's Envoy counts nothing, b's app sees host a.
    before = {name: mesh.a.stat(name) for name in (passthrough, "listener.0.0.0.0_15001.downstream_cx_total")}
    body = mesh.get(f"http://{mesh.b.ip}:{EXCLUDED_PORT}/")
    assert f"peer={mesh.a.ip} port={EXCLUDED_PORT}" in body
    assert {name: mesh.a.stat(name) for name in before} == before


def test_uninstall_restores_the_tables(mesh: TransparentMesh) -> None:
    saved = mesh.lab.run(mesh.b.ns, ["iptables-save"]).stdout
    assert "KUMA_MESH_OUTBOUND" in saved and "kuma/mesh/transparent/proxy" in saved
    res = mesh.lab.run(mesh.b.ns, [str(BIN / "kumactl"), "uninstall", "transparent-proxy"])
    assert res.returncode == 0, res.stderr
    assert "KUMA_MESH" not in mesh.lab.run(mesh.b.ns, ["iptables-save"]).stdout
    # Without b's rules, a's Envoy reaches b's app directly: the app sees host a, not 127.0.0.6.
    assert f"peer={mesh.a.ip} port={APP_PORT}" in mesh.get(f"http://{mesh.b.ip}:{APP_PORT}/")
