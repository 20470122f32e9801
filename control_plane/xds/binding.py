"""Who owns a Dataplane: an administrator (`kumactl apply`) or the proxy that registered it.

A dataplane token may name only the Dataplane (`--name`, no `--tag`): it then proves "I am
backend-1" and nothing about which services backend-1 runs. When an administrator applied
backend-1, what it serves is the administrator's word: a proxy presenting that name may not bring
a Dataplane of its own with other services or tags (at `/bootstrap`, `POST /certificate` or on
its ADS stream) and so get a certificate or traffic for a service it was never given.

A Dataplane is proxy-owned when the lifecycle's registration record (`DataplaneRegistration`,
internal, never served by the API) exists beside it; without one it was applied by an admin.
"""

from __future__ import annotations

from control_plane.resources.dataplane import Dataplane
from control_plane.store.base import ResourceKey, ResourceStore, dataplane_key

# Store records (internal: not served by the API) remembering which Dataplanes a proxy registered,
# so that after a control-plane restart those whose proxy never returns are still removed.
REGISTRATION_TYPE = "DataplaneRegistration"


class BindingConflict(Exception):
    """The proxy's Dataplane would change an admin-applied one's services or tags."""


def registration_key(mesh: str, name: str) -> ResourceKey:
    return ResourceKey(REGISTRATION_TYPE, mesh, name)


def admin_applied(store: ResourceStore, mesh: str, name: str) -> Dataplane | None:
    """The stored Dataplane `mesh`/`name` if an administrator applied it, else None."""
    stored = store.get(dataplane_key(name, mesh))
    if stored is None or store.get(registration_key(mesh, name)) is not None:
        return None
    return Dataplane.model_validate(stored.document())


def identity_of(dataplane: Dataplane) -> list[list[tuple[str, str]]]:
    """What a Dataplane claims to be: the tags of each inbound (services included), in a
    comparable form; addresses and ports are not part of it."""
    return sorted(sorted(inbound.tags.items()) for inbound in dataplane.networking.inbound)


def conflict(applied: Dataplane, sent: Dataplane) -> str | None:
    """Why `sent` may not stand for the admin-applied `applied` (pure), or None."""
    if identity_of(applied) == identity_of(sent):
        return None
    return (
        f"dataplane {applied.mesh}/{applied.name} was applied by an administrator with services "
        f"{applied.services} and inbound tags {_tags(applied)}; the proxy's Dataplane declares services "
        f"{sent.services} and inbound tags {_tags(sent)}: a proxy may not change the services or tags "
        "of an applied Dataplane (start kuma-dp with --name only, or change the Dataplane with kumactl)"
    )


def check_binding(store: ResourceStore, sent: Dataplane) -> None:
    """BindingConflict if `sent` (from a proxy) contradicts an admin-applied Dataplane of its name."""
    applied = admin_applied(store, sent.mesh, sent.name)
    if applied is not None:
        reason = conflict(applied, sent)
        if reason is not None:
            raise BindingConflict(reason)


def _tags(dataplane: Dataplane) -> list[dict[str, str]]:
    return [dict(inbound.tags) for inbound in dataplane.networking.inbound]
