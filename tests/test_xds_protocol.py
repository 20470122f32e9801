"""The ADS stream state machine alone (no gRPC): what it answers to which request."""

from __future__ import annotations

from collections import Counter

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from control_plane.xds.cache import SnapshotCache, build_snapshot
from control_plane.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE
from control_plane.xds.server import _Stream

NODE = "default.web-1"


def _snapshot(cluster_timeout_s: int) -> object:
    cluster = cluster_pb2.Cluster(name="backend", type=cluster_pb2.Cluster.EDS)
    cluster.connect_timeout.seconds = cluster_timeout_s
    return build_snapshot(
        {
            CLUSTER_TYPE: {"backend": cluster},
            ENDPOINT_TYPE: {"backend": endpoint_pb2.ClusterLoadAssignment(cluster_name="backend")},
        }
    )


def _request(type_url: str, version: str = "", nonce: str = "", names: tuple[str, ...] = ()) -> object:
    return discovery_pb2.DiscoveryRequest(
        type_url=type_url, version_info=version, response_nonce=nonce, resource_names=list(names)
    )


def test_a_changed_cluster_gets_its_unchanged_endpoints_again() -> None:
    """Envoy warms a replaced EDS cluster until it receives its ClusterLoadAssignment again; an
    unanswered EDS request would leave it warming for the 15 s initial-fetch timeout."""
    cache = SnapshotCache()
    cache.set_snapshot(NODE, _snapshot(1))
    stream = _Stream(NODE, cache, Counter())
    [cds] = stream.on_request(_request(CLUSTER_TYPE))
    stream.on_request(_request(CLUSTER_TYPE, cds.version_info, cds.nonce))
    [eds] = stream.on_request(_request(ENDPOINT_TYPE, names=("backend",)))
    assert stream.on_request(_request(ENDPOINT_TYPE, eds.version_info, eds.nonce, ("backend",))) == []

    cache.set_snapshot(NODE, _snapshot(2))  # the cluster changes, its endpoints do not
    pushed = stream.on_snapshot_change()
    assert [r.type_url for r in pushed] == [CLUSTER_TYPE, ENDPOINT_TYPE]
    assert pushed[1].version_info == eds.version_info

    # Answered by request too: after a CDS response, the next EDS request is answered once.
    cache.set_snapshot(NODE, _snapshot(3))
    stream2 = _Stream(NODE, cache, Counter())
    [eds2] = stream2.on_request(_request(ENDPOINT_TYPE, names=("backend",)))
    stream2.on_request(_request(ENDPOINT_TYPE, eds2.version_info, eds2.nonce, ("backend",)))
    [cds2] = stream2.on_request(_request(CLUSTER_TYPE))
    again = stream2.on_request(_request(ENDPOINT_TYPE, eds2.version_info, eds2.nonce, ("backend",)))
    assert [r.type_url for r in again] == [ENDPOINT_TYPE]
    assert stream2.on_request(_request(ENDPOINT_TYPE, eds2.version_info, again[0].nonce, ("backend",))) == []
    assert cds2.type_url == CLUSTER_TYPE
