"""mTLS for a `policy_mesh`: the default Mesh in PERMISSIVE mode with a test CA, certificates on
disk for the proxies about to start, and the allow-all permission zero trust needs.

    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await permissive_mtls(mesh, {"backend-1": "backend", "web-1": "web"})
        await mesh.backend("backend-1", "backend", app)   # its Envoy finds its certificate files

A PERMISSIVE inbound has two filter chains: mesh peers over mTLS (their outbound Envoy) and
plaintext callers (a test's own client, straight to the inbound's port).
"""

from __future__ import annotations

from collections.abc import Mapping

from control_plane.store.base import mesh_key
from labkit.lab import ALLOW_ALL_PERMISSION
from tests.support.mesh_ca import MeshCa
from tests.support.policy_mesh import PolicyMesh

PERMISSIVE = {
    "mtls": {
        "enabledBackend": "ca-1",
        "backends": [{"name": "ca-1", "type": "builtin", "mode": "PERMISSIVE"}],
    }
}


async def permissive_mtls(mesh: PolicyMesh, services: Mapping[str, str]) -> MeshCa:
    """Turn mTLS on (PERMISSIVE) before the proxies named in `services` (proxy name → its
    service) start: each gets the files its agent would write, in the work dir it will run in."""
    ca = MeshCa()
    for name, service in services.items():
        ca.write_sds_files(mesh.root / name, service)
    mesh.cp.store.upsert(mesh_key("default"), PERMISSIVE)
    await mesh.apply(ALLOW_ALL_PERMISSION)
    return ca
