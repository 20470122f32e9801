"""Revoked token ids (jti) per mesh, in Kuma's layout.

`ResourceKey("Secret", <mesh>, "dataplane-token-revocations-<mesh>")`, spec `{"data": <base64 of
comma-separated jtis>}`.
"""

from __future__ import annotations

import base64
import functools

from control_plane.store.base import ConflictError, ResourceKey, ResourceStore
from control_plane.tokens.keys import SECRET_TYPE

REVOCATIONS_PREFIX = "dataplane-token-revocations-"
_MAX_ATTEMPTS = 10


def revocations_key(mesh: str) -> ResourceKey:
    return ResourceKey(SECRET_TYPE, mesh, f"{REVOCATIONS_PREFIX}{mesh}")


@functools.lru_cache(maxsize=64)
def _decode(data: str) -> frozenset[str]:
    text = base64.b64decode(data).decode()
    return frozenset(jti.strip() for jti in text.split(",") if jti.strip())


def revoked_ids(store: ResourceStore, mesh: str) -> frozenset[str]:
    stored = store.get(revocations_key(mesh))
    return frozenset() if stored is None else _decode(stored.spec.get("data", ""))


def revoke(store: ResourceStore, mesh: str, jti: str) -> bool:
    """Add `jti` to the mesh's list; False if it was already there. Safe against concurrent writers
    (optimistic retry on the stored version)."""
    key = revocations_key(mesh)
    for _ in range(_MAX_ATTEMPTS):
        stored = store.get(key)
        current = frozenset() if stored is None else _decode(stored.spec.get("data", ""))
        if jti in current:
            return False
        data = base64.b64encode(",".join(sorted(current | {jti})).encode()).decode()
        try:
            store.upsert(key, {"data": data}, expected_version=stored.version if stored else 0)
        except ConflictError:
            continue
        return True
    raise ConflictError(f"the revocation list of mesh {mesh!r} kept changing; try again")
