"""Kuma's `origin` of a generated resource (which generator made it), derived here from the names
the generator gives (control_plane/xds/names.py, transparent.py):

- `inbound`: listeners `inbound:<address>:<port>`, clusters `localhost:<port>` (the application);
- `outbound`: listeners `outbound:<address>:<port>`, a mesh service's cluster (EDS, with its
  endpoints served), and `outbound:<service>` filter chains wherever they are;
- `transparent`: `inbound:passthrough:<family>` and `outbound:passthrough:<family>` (listeners and
  clusters of those names), and the passthrough listeners' other chains;
- `mesh-proxy-patch`: what a MeshProxyPatch added (for its later modifications).

With transparent proxying, calls to mesh services go through `outbound:<service>` chains of the
`outbound:passthrough:*` listener rather than through listeners of their own; so that filters and
virtual hosts of origin `outbound` are found wherever they are, a chain's origin counts for them.
"""

from __future__ import annotations

INBOUND = "inbound"
OUTBOUND = "outbound"
TRANSPARENT = "transparent"
MESH_PROXY_PATCH = "mesh-proxy-patch"  # Kuma's origin of what a MeshProxyPatch adds
ORIGINS = (INBOUND, OUTBOUND, TRANSPARENT, MESH_PROXY_PATCH)

_PASSTHROUGH = ("inbound:passthrough:", "outbound:passthrough:")
_LOCAL_CLUSTER = "localhost:"


def listener_origin(name: str) -> str | None:
    if name.startswith(_PASSTHROUGH):
        return TRANSPARENT
    if name.startswith("inbound:"):
        return INBOUND
    if name.startswith("outbound:"):
        return OUTBOUND
    return None


def cluster_origin(name: str, has_endpoints: bool) -> str | None:
    """`has_endpoints`: a load assignment of that name is served (a mesh service's cluster)."""
    if name.startswith(_PASSTHROUGH):
        return TRANSPARENT
    if name.startswith(_LOCAL_CLUSTER):
        return INBOUND
    return OUTBOUND if has_endpoints else None


def chain_origin(listener: str | None, chain_name: str) -> str | None:
    """A filter chain's origin: an `outbound:<service>` chain is outbound wherever it is."""
    if (
        listener == TRANSPARENT
        and chain_name.startswith("outbound:")
        and not chain_name.startswith(_PASSTHROUGH)
    ):
        return OUTBOUND
    return listener
