"""The REST API through its HTTP interface (httpx over ASGI): paths, shapes, validation, access."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import yaml

from control_plane.api.app import create_app
from control_plane.store.base import ResourceStore
from control_plane.store.memory import MemoryStore

BASE = "http://localhost:5681"
YAML = {"Content-Type": "application/yaml"}

DATAPLANE = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "backend-1",
    "networking": {
        "address": "10.0.0.5",
        "inbound": [{"port": 11011, "servicePort": 11012, "tags": {"kuma.io/service": "backend"}}],
    },
}


def client_for(
    store: ResourceStore, client: tuple[str, int] = ("127.0.0.1", 50000), **kw: Any
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(store, **kw), client=client)
    return httpx.AsyncClient(transport=transport, base_url=BASE)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def api(store: MemoryStore) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(store) as client:
        response = await client.put("/meshes/default", json={"type": "Mesh", "name": "default"})
        assert response.status_code == 201
        yield client


def causes(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) >= {"title", "details"}
    return {c["field"]: c["message"] for c in body.get("causes", [])}


def dataplane(name: str, **changes: Any) -> dict[str, Any]:
    return {**DATAPLANE, "name": name, **changes}


async def test_index_identifies_a_kuma_control_plane(api: httpx.AsyncClient) -> None:
    body = (await api.get("/")).json()
    assert body["tagline"] == "Kuma"
    assert body["basedOnKuma"] == "2.14.0"
    assert body["product"] == "kuma-py"
    assert body["version"] and body["hostname"]


async def test_create_get_update_keeps_creation_time(api: httpx.AsyncClient) -> None:
    created = await api.put("/meshes/default/dataplanes/backend-1", json=DATAPLANE)
    assert created.status_code == 201
    first = (await api.get("/meshes/default/dataplanes/backend-1")).json()
    assert first["type"] == "Dataplane" and first["mesh"] == "default" and first["name"] == "backend-1"
    assert first["networking"]["inbound"][0]["tags"] == {"kuma.io/service": "backend"}
    await asyncio.sleep(0.01)  # timestamps have millisecond resolution
    changed = json.loads(json.dumps(DATAPLANE))
    changed["networking"]["address"] = "10.0.0.6"
    changed["creationTime"] = "1999-01-01T00:00:00Z"  # read-only: ignored
    updated = await api.put("/meshes/default/dataplanes/backend-1", json=changed)
    assert updated.status_code == 200
    second = (await api.get("/meshes/default/dataplanes/backend-1")).json()
    assert second["networking"]["address"] == "10.0.0.6"
    assert second["creationTime"] == first["creationTime"]
    assert second["modificationTime"] > first["modificationTime"]
    assert updated.json() == second


async def test_store_version_increases_on_update(api: httpx.AsyncClient, store: MemoryStore) -> None:
    from control_plane.store.base import dataplane_key

    await api.put("/meshes/default/dataplanes/backend-1", json=DATAPLANE)
    await api.put("/meshes/default/dataplanes/backend-1", json=DATAPLANE)
    assert store.get(dataplane_key("backend-1")).version == 2  # type: ignore[union-attr]


async def test_yaml_body_and_missing_name_and_mesh_taken_from_path(api: httpx.AsyncClient) -> None:
    doc = {k: v for k, v in DATAPLANE.items() if k not in ("name", "mesh")}
    response = await api.put("/meshes/default/dataplanes/web", content=yaml.safe_dump(doc), headers=YAML)
    assert response.status_code == 201, response.text
    got = (await api.get("/meshes/default/dataplanes/web")).json()
    assert (got["mesh"], got["name"]) == ("default", "web")


async def test_list_pagination_with_next(api: httpx.AsyncClient) -> None:
    for i in range(5):
        assert (
            await api.put(f"/meshes/default/dataplanes/dp-{i}", json=dataplane(f"dp-{i}"))
        ).status_code == 201
    page = (await api.get("/meshes/default/dataplanes", params={"size": 2})).json()
    assert page["total"] == 5
    assert [d["name"] for d in page["items"]] == ["dp-0", "dp-1"]
    names = [d["name"] for d in page["items"]]
    while page["next"]:
        assert page["next"].startswith(BASE + "/meshes/default/dataplanes?")
        page = (await api.get(page["next"])).json()
        names += [d["name"] for d in page["items"]]
    assert names == [f"dp-{i}" for i in range(5)]
    full = (await api.get("/meshes/default/dataplanes")).json()
    assert full["total"] == 5 and len(full["items"]) == 5 and full["next"] is None


async def test_list_all_meshes(api: httpx.AsyncClient) -> None:
    await api.put("/meshes/other", json={"type": "Mesh", "name": "other"})
    await api.put("/meshes/other/dataplanes/a", json=dataplane("a", mesh="other"))
    await api.put("/meshes/default/dataplanes/b", json=dataplane("b"))
    body = (await api.get("/dataplanes")).json()
    assert [(d["mesh"], d["name"]) for d in body["items"]] == [("default", "b"), ("other", "a")]
    meshes = (await api.get("/meshes")).json()
    assert [m["name"] for m in meshes["items"]] == ["default", "other"]
    assert (await api.get("/meshes/other/dataplanes")).json()["total"] == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"size": "0"}, "size"),
        ({"size": "1001"}, "size"),
        ({"size": "x"}, "size"),
        ({"offset": "-1"}, "offset"),
    ],
)
async def test_bad_paging_params_are_400(api: httpx.AsyncClient, params: dict[str, str], field: str) -> None:
    response = await api.get("/meshes/default/dataplanes", params=params)
    assert response.status_code == 400
    assert field in causes(response)


async def test_malformed_yaml_names_line(api: httpx.AsyncClient) -> None:
    body = "type: Dataplane\nnetworking:\n  address: [1\n"
    response = await api.put("/meshes/default/dataplanes/x", content=body, headers=YAML)
    assert response.status_code == 400
    assert "line" in causes(response)["(body)"]


async def test_malformed_json_names_line(api: httpx.AsyncClient) -> None:
    response = await api.put(
        "/meshes/default/dataplanes/x",
        content='{"type": "Dataplane",\n oops}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert causes(response)["(body)"].startswith("line 2")


async def test_every_offending_field_is_named(api: httpx.AsyncClient) -> None:
    doc = json.loads(json.dumps(DATAPLANE))
    doc["networking"]["inbound"] = [
        {"port": 70000, "tags": {"kuma.io/service": "a"}},
        {"port": 8080, "tags": {"app": "b"}},
    ]
    doc["networking"]["adress"] = "typo"
    response = await api.put("/meshes/default/dataplanes/backend-1", json=doc)
    assert response.status_code == 400
    named = causes(response)
    assert "networking.inbound[0].port" in named
    assert "kuma.io/service" in named["networking.inbound[1].tags"]
    assert named["networking.adress"] == "unknown field"


async def test_unknown_mesh_is_400_on_mesh(api: httpx.AsyncClient) -> None:
    response = await api.put("/meshes/nope/dataplanes/backend-1", json=dataplane("backend-1", mesh="nope"))
    assert response.status_code == 400
    assert causes(response)["mesh"] == 'mesh "nope" does not exist; create it first (kumactl apply a Mesh)'


@pytest.mark.parametrize(
    ("override", "field"),
    [({"name": "other"}, "name"), ({"mesh": "other"}, "mesh"), ({"type": "Mesh"}, "type")],
)
async def test_body_must_match_path(api: httpx.AsyncClient, override: dict[str, str], field: str) -> None:
    response = await api.put("/meshes/default/dataplanes/backend-1", json={**DATAPLANE, **override})
    assert response.status_code == 400
    assert "path" in causes(response)[field]


async def test_non_mapping_body_and_unsupported_type(api: httpx.AsyncClient) -> None:
    response = await api.put("/meshes/default/dataplanes/x", content="- a\n", headers=YAML)
    assert response.status_code == 400 and "(root)" in causes(response)
    response = await api.put(
        "/meshes/default/dataplanes/x", content="x", headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 415


async def test_get_and_delete_absent_are_404(api: httpx.AsyncClient) -> None:
    for response in (await api.get("/meshes/default/dataplanes/nope"), await api.delete("/meshes/nope")):
        assert response.status_code == 404
        assert "nope" in response.json()["details"]


async def test_unknown_path_and_wrong_method_use_kuma_errors(api: httpx.AsyncClient) -> None:
    response = await api.get("/no/such/path")
    assert response.status_code == 404 and response.json()["title"]
    response = await api.post("/meshes/default")
    assert response.status_code == 405 and response.json()["title"] == "Method Not Allowed"
    assert "PUT" in response.headers["allow"]


async def test_delete_mesh_cascades(api: httpx.AsyncClient) -> None:
    await api.put("/meshes/other", json={"type": "Mesh", "name": "other"})
    await api.put("/meshes/other/dataplanes/a", json=dataplane("a", mesh="other"))
    await api.put("/meshes/default/dataplanes/b", json=dataplane("b"))
    assert (await api.delete("/meshes/other")).status_code == 200
    assert (await api.get("/meshes/other")).status_code == 404
    assert (await api.get("/meshes/other/dataplanes/a")).status_code == 404
    assert [d["name"] for d in (await api.get("/dataplanes")).json()["items"]] == ["b"]


async def test_writes_racing_a_mesh_delete_leave_no_orphans(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await api.put("/meshes/m", json={"type": "Mesh"})
    puts = [api.put(f"/meshes/m/dataplanes/d{i}", json=dataplane(f"d{i}", mesh="m")) for i in range(20)]
    responses = await asyncio.gather(*puts[:10], api.delete("/meshes/m"), *puts[10:])
    assert responses[10].status_code == 200
    assert {r.status_code for r in responses} <= {200, 201, 400}
    assert store.list("Dataplane", mesh="m")[1] == 0


async def test_delete_dataplane(api: httpx.AsyncClient) -> None:
    await api.put("/meshes/default/dataplanes/b", json=dataplane("b"))
    assert (await api.delete("/meshes/default/dataplanes/b")).status_code == 200
    assert (await api.get("/meshes/default/dataplanes/b")).status_code == 404


async def test_writes_from_other_hosts_are_403_reads_allowed(store: MemoryStore) -> None:
    async with client_for(store) as local:
        await local.put("/meshes/default", json={"type": "Mesh", "name": "default"})
    async with client_for(store, client=("10.1.2.3", 123)) as remote:
        assert (await remote.get("/meshes/default")).status_code == 200
        for response in (
            await remote.put("/meshes/evil", json={"type": "Mesh", "name": "evil"}),
            await remote.delete("/meshes/default"),
        ):
            assert response.status_code == 403
            assert "admin credentials are required" in response.json()["details"]
            assert "10.1.2.3" in response.json()["details"]
    assert [r.key.name for r in store.list("Mesh")[0]] == ["default"]


async def test_ipv6_loopback_is_admin_and_switch_off_denies_all(store: MemoryStore) -> None:
    async with client_for(store, client=("::1", 1)) as v6:
        assert (await v6.put("/meshes/a", json={"type": "Mesh"})).status_code == 201
    async with client_for(store, localhost_is_admin=False) as local:
        response = await local.put("/meshes/b", json={"type": "Mesh"})
        assert response.status_code == 403
        assert "KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN" in response.json()["details"]


async def test_cross_origin_browser_writes_are_refused(api: httpx.AsyncClient) -> None:
    """A page from elsewhere reaching localhost (DNS rebinding) is not admin; a local page is."""
    doc = {"type": "Mesh"}
    response = await api.put("/meshes/a", json=doc, headers={"Origin": "http://evil.example:5681"})
    assert response.status_code == 403 and "evil.example" in response.json()["details"]
    response = await api.put("/meshes/a", json=doc, headers={"Origin": "http://localhost:5681"})
    assert response.status_code == 201


async def test_no_cors_wildcard(api: httpx.AsyncClient) -> None:
    response = await api.get("/meshes", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers


class BrokenStore(MemoryStore):
    def list(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")


async def test_500_has_no_traceback() -> None:
    app = create_app(BrokenStore())
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        response = await client.get("/meshes")
    assert response.status_code == 500
    assert "Traceback" not in response.text and "secret internal detail" not in response.text
    assert response.json()["title"] == "Internal Server Error"


async def test_a_stale_update_or_delete_gets_409_and_changes_nothing(api: httpx.AsyncClient) -> None:
    created = await api.put("/meshes/default/dataplanes/b", json=dataplane("b"))
    assert created.status_code == 201 and created.headers["etag"] == '"1"'
    read = await api.get("/meshes/default/dataplanes/b")
    etag = read.headers["etag"]
    # Someone else updates it meanwhile.
    assert (await api.put("/meshes/default/dataplanes/b", json=dataplane("b"))).headers["etag"] == '"2"'
    changed = dataplane("b")
    changed["networking"]["address"] = "10.9.9.9"
    stale = await api.put("/meshes/default/dataplanes/b", json=changed, headers={"If-Match": etag})
    assert stale.status_code == 409
    assert "changed by someone else" in stale.json()["details"]
    assert (await api.get("/meshes/default/dataplanes/b")).json()["networking"]["address"] != "10.9.9.9"
    assert (await api.delete("/meshes/default/dataplanes/b", headers={"If-Match": etag})).status_code == 409
    # With the current version both go through.
    fresh = await api.put("/meshes/default/dataplanes/b", json=changed, headers={"If-Match": '"2"'})
    assert fresh.status_code == 200 and fresh.headers["etag"] == '"3"'
    assert (await api.delete("/meshes/default/dataplanes/b", headers={"If-Match": '"3"'})).status_code == 200
    # "Create only": If-Match "0" on something that exists.
    await api.put("/meshes/default/dataplanes/c", json=dataplane("c"))
    assert (
        await api.put("/meshes/default/dataplanes/c", json=dataplane("c"), headers={"If-Match": '"0"'})
    ).status_code == 409


async def test_a_malformed_if_match_is_400_naming_it(api: httpx.AsyncClient) -> None:
    await api.put("/meshes/default/dataplanes/b", json=dataplane("b"))
    response = await api.put("/meshes/default/dataplanes/b", json=dataplane("b"), headers={"If-Match": "abc"})
    assert response.status_code == 400
    assert "If-Match" in response.json()["details"]
