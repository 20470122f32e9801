"""What the control plane shares between the proxies of a mesh, and that sharing changes nothing
a proxy receives: the mesh-wide outbound part of transparent proxies (an Overlay packed once),
the mesh view kept between passes, store changes the generator does not read, and responses
encoded from shared bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from control_plane.policies.core.parts import ProxyResources
from control_plane.policies.loading import mesh_policies
from control_plane.resources.dataplane import Dataplane
from control_plane.resources.mesh import Mesh
from control_plane.resources.registry import parse_resource, to_document
from control_plane.store.base import ResourceKey, dataplane_key, mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.xds.cache import Packed, Packer, Snapshot, SnapshotCache, build_snapshot
from control_plane.xds.generate.endpoints import EndpointIndex
from control_plane.xds.generate.overlay import Overlay
from control_plane.xds.generate.snapshot import ProxyContext, generate_snapshot
from control_plane.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE
from control_plane.xds.reconciler import Reconciler
from control_plane.xds.server import EncodedResponse
from labkit.waiting import eventually

TP = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}
MTLS = {"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}
PROTOCOLS = ("http", "tcp", "grpc", "http2")


def doc(name: str, address: str, service: str, protocol: str = "http", **net: Any) -> dict[str, Any]:
    inbound = [{"port": 8080, "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol}}]
    return {
        "type": "Dataplane",
        "mesh": "default",
        "name": name,
        "networking": {"address": address, "inbound": inbound, **net},
    }


def mesh_docs(count: int = 12) -> list[dict[str, Any]]:
    """Four services of mixed protocols, transparent proxies, one on the address of another
    (two services on one address) and one service with a single endpoint."""
    docs = [
        doc(f"dp-{i}", f"10.0.0.{i + 1}", f"svc-{i % 4}", PROTOCOLS[i % 4], transparentProxying=TP)
        for i in range(count)
    ]
    docs.append(doc("twin", "10.0.0.2", "svc-9", "tcp", transparentProxying=TP))
    docs.append(doc("alone", "10.0.9.9", "lonely", "http", transparentProxying=TP))
    return docs


def models(docs: list[dict[str, Any]]) -> list[Dataplane]:
    return [Dataplane.model_validate(d) for d in docs]


def wire(snapshot: Snapshot, type_url: str) -> list[tuple[str, bytes]]:
    """What a proxy receives for a type: names and serialized resources, in order."""
    return [(name, packed.value) for name, packed in snapshot.get(type_url).resources.items()]


def unshared(dataplane: Dataplane, mesh_dataplanes: list[Dataplane], mesh: Mesh | None) -> Snapshot:
    """The same proxy through the per-outbound path (no mesh-wide Overlay): `reachableServices`
    naming every service reaches what the default reaches, built one outbound at a time."""
    everything = sorted({i.service for d in mesh_dataplanes for i in d.networking.inbound})
    doc_ = dataplane.model_dump(mode="json", exclude_none=True)
    doc_["networking"]["transparentProxying"]["reachableServices"] = everything
    narrowed = Dataplane.model_validate({"type": "Dataplane", **doc_})
    context = ProxyContext(workdir="/w")
    return build_snapshot(generate_snapshot(narrowed, mesh_dataplanes, mesh, context=context))


@pytest.mark.parametrize("mesh_spec", [{}, MTLS], ids=["plain", "mtls"])
def test_shared_outbounds_give_every_proxy_what_it_would_get_alone(mesh_spec: dict[str, Any]) -> None:
    dataplanes = models(mesh_docs())
    mesh = Mesh.model_validate({"type": "Mesh", "name": "default", **mesh_spec})
    index, packer = EndpointIndex(dataplanes), Packer()
    for dataplane in dataplanes:
        resources = generate_snapshot(
            dataplane, dataplanes, mesh, endpoints=index, context=ProxyContext(workdir="/w")
        )
        assert isinstance(resources[LISTENER_TYPE], Overlay)
        shared, alone = build_snapshot(resources, packer), unshared(dataplane, dataplanes, mesh)
        for type_url in (LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE):
            assert wire(shared, type_url) == wire(alone, type_url), (dataplane.name, type_url)


def test_two_proxies_share_outbound_bytes_and_keep_only_their_inbounds_apart() -> None:
    dataplanes = models(mesh_docs())
    index, packer = EndpointIndex(dataplanes), Packer()
    a, b = (
        build_snapshot(generate_snapshot(d, dataplanes, None, endpoints=index), packer)
        for d in dataplanes[:2]
    )
    la, lb = a.get(LISTENER_TYPE).entries, b.get(LISTENER_TYPE).entries
    # One Packed object: the redirect listener (every endpoint of the mesh) is serialized once.
    assert la["outbound:passthrough:ipv4"] is lb["outbound:passthrough:ipv4"]
    assert sorted(la) == ["inbound:10.0.0.1:8080", "inbound:passthrough:ipv4", "outbound:passthrough:ipv4"]
    assert "inbound:10.0.0.2:8080" in lb and "inbound:10.0.0.1:8080" not in lb
    # `lonely` has one endpoint: its own proxy has its cluster too (the shared chain names it), but
    # a call to its address is handed to its `inbound:` listener, never to the chain.
    alone = build_snapshot(generate_snapshot(dataplanes[-1], dataplanes, None, endpoints=index), packer)
    assert "inbound:10.0.9.9:8080" in alone.get(LISTENER_TYPE).entries
    assert alone.get(CLUSTER_TYPE).entries["lonely"] is a.get(CLUSTER_TYPE).entries["lonely"]
    assert a.get(CLUSTER_TYPE).entries["lonely"] is b.get(CLUSTER_TYPE).entries["lonely"]


def test_encoded_response_is_byte_for_byte_the_discovery_response() -> None:
    entries = [
        Packed(f"r{i}", any_pb2.Any(type_url="type.googleapis.com/x", value=bytes(range(i % 250)) * 3))
        for i in range(300)  # sizes across the one- and two-byte length prefixes
    ]
    for chosen in ([], entries[:1], entries):
        encoded = EncodedResponse("v1", "type.googleapis.com/x", "42", chosen)
        plain = discovery_pb2.DiscoveryResponse(
            version_info="v1",
            type_url="type.googleapis.com/x",
            nonce="42",
            resources=[e.packed for e in chosen],
        )
        assert encoded.SerializeToString() == plain.SerializeToString()


# --- the reconciler: what a change rebuilds and pushes ----------------------------------------


def spec_of(document: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in to_document(parse_resource(document)).items() if k not in ("type", "mesh", "name")
    }


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    def list(self, *args: Any, **kwargs: Any) -> Any:
        self.lists += 1
        return super().list(*args, **kwargs)


@pytest.fixture
def store() -> Iterator[CountingStore]:
    store = CountingStore()
    store.upsert(mesh_key("default"), {})
    for document in mesh_docs(4):
        store.upsert(dataplane_key(document["name"]), spec_of(document))
    # Not transparent: it calls `svc-1` only, through an explicit outbound.
    caller = doc(
        "caller", "10.0.5.5", "caller", outbound=[{"port": 9001, "tags": {"kuma.io/service": "svc-1"}}]
    )
    store.upsert(dataplane_key("caller"), spec_of(caller))
    yield store


def redirect_listener_bytes(cache: SnapshotCache, node: str) -> bytes:
    return bytes(cache.get(node).get(LISTENER_TYPE).entries["outbound:passthrough:ipv4"].packed.value)


async def test_a_change_reaches_every_proxy_it_touches_and_no_other(store: CountingStore) -> None:
    cache, generated = SnapshotCache(), []
    pushes: dict[str, int] = {}

    def generator(dataplane: Dataplane, *args: Any, **kwargs: Any) -> Any:
        generated.append(dataplane.name)
        return generate_snapshot(dataplane, *args, **kwargs)

    reconciler = Reconciler(store, cache, generator=generator, debounce_s=0.01)
    task = asyncio.create_task(reconciler.run())
    try:
        for node in ("default.dp-0", "default.dp-1", "default.caller"):
            cache.watch(node, lambda node=node: pushes.__setitem__(node, pushes.get(node, 0) + 1))
            reconciler.track(node, {})
        await eventually(lambda: len(pushes) == 3)
        before = {n: cache.get(n).versions() for n in pushes}
        # svc-0's only endpoint is dp-0 itself: its cluster is there all the same (the shared chain
        # names it), while a call to that address is handed to dp-0's inbound listener.
        assert "svc-0" in cache.get("default.dp-0").get(CLUSTER_TYPE).entries
        lists = store.lists

        # A proxy connecting while the mesh is unchanged: only its own part is generated.
        generated.clear()
        reconciler.track("default.dp-2", {})
        await eventually(lambda: cache.get("default.dp-2") is not None)
        assert generated == ["dp-2"] and store.lists == lists

        # Store changes the generator does not read rebuild nothing.
        generated.clear()
        store.upsert(ResourceKey("DataplaneRegistration", "default", "dp-0"), {})
        await asyncio.sleep(0.2)
        assert generated == []

        # A new endpoint of svc-0: both transparent proxies get it, `caller` (svc-1 only) is not resent.
        new = doc("new", "10.0.7.7", "svc-0", transparentProxying=TP)
        store.upsert(dataplane_key("new"), spec_of(new))
        for node in ("default.dp-0", "default.dp-1"):
            await eventually(lambda node=node: b"10.0.7.7" in redirect_listener_bytes(cache, node))
            versions = cache.get(node).versions()
            assert versions[LISTENER_TYPE] != before[node][LISTENER_TYPE]
            assert versions[ENDPOINT_TYPE] != before[node][ENDPOINT_TYPE]
            assert pushes[node] == 2
        for node in ("default.dp-0", "default.dp-1"):  # both had the svc-0 cluster already
            assert cache.get(node).versions()[CLUSTER_TYPE] == before[node][CLUSTER_TYPE]
        assert "caller" in generated  # rebuilt, but its config did not change:
        assert cache.get("default.caller").versions() == before["default.caller"]
        assert pushes["default.caller"] == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_outbound_policies_key_the_shared_part_and_never_change_what_others_share() -> None:
    """A MeshTimeout for proxies labelled canary: those share one outbound build, the others
    another, and the others' config is byte for byte what it is without the policy."""
    docs = mesh_docs()
    docs[0]["labels"] = docs[1]["labels"] = {"canary": "yes"}
    dataplanes = models(docs)
    canary_timeout = parse_resource(
        {
            "type": "MeshTimeout",
            "mesh": "default",
            "name": "canary",
            "spec": {
                "targetRef": {"kind": "Dataplane", "labels": {"canary": "yes"}},
                "to": [
                    {
                        "targetRef": {"kind": "MeshService", "name": "svc-0"},
                        "default": {"connectionTimeout": "1s"},
                    }
                ],
            },
        }
    )
    index, packer = EndpointIndex(dataplanes), Packer()
    policies = mesh_policies("default", [canary_timeout])

    def snapshot(dataplane: Dataplane) -> Snapshot:
        return build_snapshot(
            generate_snapshot(dataplane, dataplanes, None, endpoints=index, policies=policies), packer
        )

    canary_a, canary_b, stable_a, stable_b = (snapshot(d) for d in dataplanes[:4])
    a, b, c, d = (s.get(CLUSTER_TYPE).entries for s in (canary_a, canary_b, stable_a, stable_b))
    clusters = {"a": a, "b": b, "c": c, "d": d}
    assert clusters["a"]["svc-0"] is clusters["b"]["svc-0"]  # canaries share their build
    assert clusters["c"]["svc-0"] is clusters["d"]["svc-0"]  # so do the others
    assert clusters["a"]["svc-0"] is not clusters["c"]["svc-0"]
    assert clusters["a"]["svc-1"].packed.value == clusters["c"]["svc-1"].packed.value  # not named: same
    assert clusters["a"]["svc-0"].packed.value != clusters["c"]["svc-0"].packed.value
    # What a stable proxy gets is exactly what it gets in a mesh without the policy.
    without = build_snapshot(
        generate_snapshot(dataplanes[2], dataplanes, None, endpoints=EndpointIndex(dataplanes))
    )
    for type_url in (LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE):
        assert wire(stable_a, type_url) == wire(without, type_url), type_url


def test_whole_proxy_edits_stay_the_proxys_own_and_never_reach_the_shared_base() -> None:
    """What a policy applied to the whole proxy does (MeshProxyPatch) through ProxyResources: an
    edited, added or removed resource changes that proxy's config only."""
    dataplanes = models(mesh_docs())
    index, packer = EndpointIndex(dataplanes), Packer()
    mine = generate_snapshot(dataplanes[0], dataplanes, None, endpoints=index)
    proxy = ProxyResources(mine)
    cluster = proxy.edit(CLUSTER_TYPE, "svc-1")
    cluster.connect_timeout.seconds = 42
    proxy.remove(CLUSTER_TYPE, "svc-2")
    proxy.remove(LISTENER_TYPE, "inbound:passthrough:ipv4")
    mine_snapshot = build_snapshot(mine, packer)
    other = build_snapshot(generate_snapshot(dataplanes[1], dataplanes, None, endpoints=index), packer)
    assert isinstance(mine[CLUSTER_TYPE], Overlay) and mine[CLUSTER_TYPE].base is not mine[CLUSTER_TYPE]
    assert (
        mine_snapshot.get(CLUSTER_TYPE).entries["svc-1"].packed.value
        != other.get(CLUSTER_TYPE).entries["svc-1"].packed.value
    )
    assert (
        "svc-2" not in mine_snapshot.get(CLUSTER_TYPE).entries and "svc-2" in other.get(CLUSTER_TYPE).entries
    )
    assert "inbound:passthrough:ipv4" not in mine_snapshot.get(LISTENER_TYPE).entries
    assert (
        other.get(CLUSTER_TYPE).entries["svc-1"]
        is build_snapshot(generate_snapshot(dataplanes[2], dataplanes, None, endpoints=index), packer)
        .get(CLUSTER_TYPE)
        .entries["svc-1"]
    )  # the shared one, untouched
