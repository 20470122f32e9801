"""MeshLoadBalancingStrategy with real Envoy and real traffic: RingHash on a header keeps each user
on one instance while users spread over the instances; other types show as the cluster's
lb_policy in Envoy's config; a merge of a Mesh RingHash with a MeshService LeastRequest; and
validation through `kumactl apply` (every bad field named, nothing stored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from labkit.waiting import eventually
from tests.support.kumactl_api import assert_refused, config_file, kumactl, server  # noqa: F401 - fixtures
from tests.support.policy_mesh import PolicyMesh, Proxy, Reply, policy_mesh

pytestmark = pytest.mark.timeout(120)

INSTANCES = ("backend-1", "backend-2", "backend-3")


def strategy(name: str, to: dict[str, Any], default: dict[str, Any]) -> str:
    spec = {"to": [{"targetRef": to, "default": default}]}
    document = {"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": name, "spec": spec}
    return yaml.safe_dump(document)


MESH = {"kind": "Mesh"}
BACKEND = {"kind": "MeshService", "name": "backend"}
RING_HASH_ON_USER = {
    "loadBalancer": {
        "type": "RingHash",
        "ringHash": {"hashPolicies": [{"type": "Header", "header": {"name": "x-user"}}]},
    }
}


async def three_instances(mesh: PolicyMesh) -> Proxy:
    """backend-1..3 (each answers its name) and a caller whose Envoy knows all three."""
    for name in INSTANCES:
        await mesh.backend(name, "backend", lambda _r, name=name: Reply(body=name.encode()))
    web = await mesh.client("web-1", ["backend"])
    await eventually(lambda: _count(web.hosts("backend"), len(INSTANCES)), timeout=10)
    return web


async def _count(hosts: Any, wanted: int) -> bool:
    return len(await hosts) == wanted


async def answers(client: Proxy, requests: int, user: str) -> list[str]:
    names = []
    for _ in range(requests):
        response = await client.get("backend", "/", headers={"x-user": user})
        assert response.status_code == 200, response.text
        names.append(response.text)
    return names


async def hashing_applies(client: Proxy) -> None:
    """Wait until one user's 6 calls land on one instance: Envoy's workers pick the new cluster up
    just after /config_dump shows it, and under round robin 6 calls never share an instance."""

    async def sticks() -> bool:
        return len(set(await answers(client, 6, "probe"))) == 1

    await eventually(sticks, timeout=5)


async def test_ring_hash_on_a_header_keeps_each_user_on_one_instance(
    envoy_binary: Path, tmp_path: Path
) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        web = await three_instances(mesh)
        # Round robin (no policy): one user's requests go everywhere.
        assert set(await answers(web, 6, "alice")) == set(INSTANCES)

        await mesh.apply(strategy("sticky-users", BACKEND, RING_HASH_ON_USER))
        assert (await web.cluster("backend"))["lb_policy"] == "RING_HASH"
        await hashing_applies(web)
        placement = {}
        for user in (f"user-{n}" for n in range(15)):
            seen = set(await answers(web, 5, user))
            assert len(seen) == 1, f"{user} was answered by {seen}"
            placement[user] = seen.pop()
        # 15 users on a ring of 3 instances: all on one would be a 1-in-3^14 chance.
        assert len(set(placement.values())) >= 2, placement
        for user, instance in list(placement.items())[:3]:  # still there on a later visit
            assert set(await answers(web, 3, user)) == {instance}


async def test_other_types_are_the_clusters_lb_policy_in_envoy(envoy_binary: Path, tmp_path: Path) -> None:
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        web = await three_instances(mesh)
        await mesh.apply(
            strategy(
                "least-request",
                BACKEND,
                {"loadBalancer": {"type": "LeastRequest", "leastRequest": {"choiceCount": 3}}},
            )
        )
        cluster = await web.cluster("backend")
        assert cluster["lb_policy"] == "LEAST_REQUEST"
        assert cluster["least_request_lb_config"] == {"choice_count": 3}
        assert set(await answers(web, 30, "alice")) <= set(INSTANCES)

        await mesh.apply(strategy("least-request", BACKEND, {"loadBalancer": {"type": "Random"}}))
        cluster = await web.cluster("backend")
        assert cluster["lb_policy"] == "RANDOM" and "least_request_lb_config" not in cluster
        # Random over 3 instances: 30 requests all on one would be a 1-in-3^29 chance.
        assert len(set(await answers(web, 30, "alice"))) >= 2

        await mesh.delete("MeshLoadBalancingStrategy", "least-request")
        assert "lb_policy" not in await web.cluster("backend")  # Envoy's default, round robin


async def test_a_meshservice_entry_overrides_the_mesh_wide_ring_hash(
    envoy_binary: Path, tmp_path: Path
) -> None:
    """Kuma's merge: the MeshService entry's RoundRobin replaces the Mesh entry's RingHash (its
    stale ringHash block is left unread), so requests are no longer hashed on the user."""
    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        web = await three_instances(mesh)
        await mesh.apply(strategy("mesh-wide", MESH, RING_HASH_ON_USER))
        await hashing_applies(web)
        assert len(set(await answers(web, 6, "alice"))) == 1
        await mesh.apply(strategy("backend", BACKEND, {"loadBalancer": {"type": "RoundRobin"}}))
        cluster = await web.cluster("backend")
        assert "lb_policy" not in cluster and "ring_hash_lb_config" not in cluster  # ROUND_ROBIN
        assert set(await answers(web, 6, "alice")) == set(INSTANCES)


INVALID = """\
type: MeshLoadBalancingStrategy
mesh: default
name: bad
spec:
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      localityAwareness: {localZone: {affinityTags: [{key: k8s.io/node}]}}
      loadBalancer:
        type: RingHash
        ringHash:
          hashFunction: SHA1
          maxRingSize: 9000000
          hashPolicies:
          - {type: Header}
          - {type: Cookie, cookie: {name: session, path: relative}}
          - {type: Magic}
  - targetRef: {kind: Mesh}
    default:
      loadBalancer: {type: Maglev, maglev: {tableSize: 65536}, leastRequest: {choiceCount: 2}}
  - targetRef: {kind: Mesh}
    default: {loadBalancer: {type: LeastRequest, leastRequest: {choiceCount: 1, bias: 2}}}
  - targetRef: {kind: Mesh}
    default: {}
"""


def test_kumactl_apply_names_every_invalid_field_and_stores_nothing(
    config_file: Path,  # noqa: F811 - the fixture
) -> None:
    ring = "spec.to[0].default.loadBalancer.ringHash"
    least = "spec.to[2].default.loadBalancer.leastRequest"
    causes = (
        ("spec.to[0].default.localityAwareness", "locality-aware load balancing needs multi-zone"),
        (f"{ring}.hashFunction", "unknown value 'SHA1'; expected 'XXHash' or 'MurmurHash2'"),
        (f"{ring}.maxRingSize", "Input should be less than or equal to 8000000"),
        (f"{ring}.hashPolicies[0].header", "is required with type Header"),
        (f"{ring}.hashPolicies[1].cookie.path", "'relative' must be an absolute path"),
        (f"{ring}.hashPolicies[2].type", "unknown value 'Magic'; expected 'Header', 'Cookie', 'Connection',"),
        ("spec.to[1].default.loadBalancer.maglev.tableSize", "65536 is not a prime number"),
        (f"{least}.choiceCount", "Input should be greater than or equal to 2"),
        (f"{least}.bias", "unknown field"),
        ("spec.to[3].default", "at least one of 'loadBalancer', 'hashPolicies' has to be defined"),
    )  # fmt: skip
    assert_refused(config_file, INVALID, causes, "meshloadbalancingstrategies")


def test_a_block_of_another_type_is_refused_naming_it(
    config_file: Path,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """Kuma would accept `leastRequest` beside `type: Maglev` and ignore it; here it is refused."""
    path = tmp_path / "mismatch.yaml"
    path.write_text(
        strategy("mismatch", MESH, {"loadBalancer": {"type": "Maglev", "leastRequest": {"choiceCount": 2}}})
    )
    result = kumactl(config_file, "apply", "-f", str(path))
    assert result.exit_code == 1
    wanted = "spec.to[0].default.loadBalancer.leastRequest: must not be set with type Maglev"
    assert wanted in result.output, result.output
