"""mTLS for a `policy_mesh`: the default Mesh in PERMISSIVE (or STRICT) mode with a test CA,
certificates on disk for the proxies about to start, and the allow-all permission zero trust needs.

    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await permissive_mtls(mesh, {"backend-1": "backend", "web-1": "web"})
        await mesh.backend("backend-1", "backend", app)   # its Envoy finds its certificate files

A PERMISSIVE inbound has two filter chains: mesh peers over mTLS (their outbound Envoy) and
plaintext callers (a test's own client, straight to the inbound's port); a STRICT one only the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control_plane.store.base import mesh_key
from labkit.lab import ALLOW_ALL_PERMISSION
from tests.support.mesh_ca import MeshCa
from tests.support.policy_mesh import PolicyMesh


def mtls_mesh(mode: str) -> dict[str, Any]:
    """The default Mesh's spec with its builtin CA's mTLS on in `mode` (PERMISSIVE or STRICT)."""
    return {
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin", "mode": mode}]}
    }


PERMISSIVE = mtls_mesh("PERMISSIVE")


async def permissive_mtls(mesh: PolicyMesh, services: Mapping[str, str]) -> MeshCa:
    """`with_mtls` in PERMISSIVE mode."""
    return await with_mtls(mesh, services, "PERMISSIVE")


async def with_mtls(mesh: PolicyMesh, services: Mapping[str, str], mode: str) -> MeshCa:
    """Turn mTLS on in `mode` (PERMISSIVE or STRICT) before the proxies named in `services` (proxy
    name → its service) start: each gets the files its agent would write, in the work dir it will
    run in."""
    ca = MeshCa()
    for name, service in services.items():
        ca.write_sds_files(mesh.root / name, service)
    mesh.cp.store.upsert(mesh_key("default"), mtls_mesh(mode))
    await mesh.apply(ALLOW_ALL_PERMISSION)
    return ca
