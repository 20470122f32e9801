"""Names shared by generators, cache and server: xDS type URLs, Envoy node ids, resource names."""

from __future__ import annotations

TYPE_PREFIX = "type.googleapis.com/"
LISTENER_TYPE = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
CLUSTER_TYPE = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE_TYPE = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"

# ADS ordering: clusters before the endpoints that fill them, both before the listeners using them.
PUSH_ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE)
# Every type the server answers; outbound and inbound routes are inline, RDS serves the DNS records.
SERVED_TYPES = (*PUSH_ORDER, ROUTE_TYPE)
# Types whose requests name the resources wanted (the others are wildcard: "send me all").
NAMED_TYPES = frozenset({ENDPOINT_TYPE, ROUTE_TYPE})

SHORT_TYPE_NAMES = {CLUSTER_TYPE: "CDS", ENDPOINT_TYPE: "EDS", LISTENER_TYPE: "LDS", ROUTE_TYPE: "RDS"}


class InvalidNodeId(ValueError):
    """An Envoy node id that is not `<mesh>.<name>`."""


def node_id(mesh: str, name: str) -> str:
    return f"{mesh}.{name}"


def parse_node_id(value: str) -> tuple[str, str]:
    """(mesh, name) of a node id; the mesh never holds a dot, so split on the first one."""
    mesh, dot, name = value.partition(".")
    if not dot or not mesh or not name:
        raise InvalidNodeId(f"node id {value!r} is not of the form <mesh>.<name>")
    return mesh, name


def host_port(address: str, port: int) -> str:
    """`address:port`, with IPv6 addresses in brackets (as Go's net.JoinHostPort, which Kuma uses)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def inbound_listener_name(address: str, port: int) -> str:
    return "inbound:" + host_port(address, port)


def outbound_listener_name(address: str, port: int) -> str:
    return "outbound:" + host_port(address, port)


def local_cluster_name(service_port: int) -> str:
    return f"localhost:{service_port}"


def stat_prefix(resource_name: str) -> str:
    """Kuma's sanitised stat prefix: ':' and '.' would split Envoy's stat name into segments."""
    return resource_name.replace(":", "_").replace(".", "_")


def short_type(type_url: str) -> str:
    return SHORT_TYPE_NAMES.get(type_url, type_url.removeprefix(TYPE_PREFIX))
