"""A mesh on loopback for policy tests: our xDS server (in-process store), REAL Envoys configured by
it as kuma-dp's would be, and apps whose behaviour a test scripts (slow, failing, a health endpoint
that turns bad). Policies go in as `kumactl apply` stores them; `converged()` waits until every
Envoy has acknowledged the config the control plane built after the change, so assertions run
against the new config, never against a timing guess.

    async with policy_mesh(envoy_binary, tmp_path) as mesh:
        await mesh.backend("backend-1", "backend", app)        # app: Handler, see HttpApp
        client = await mesh.client("web-1", ["backend"])      # outbound 127.0.0.1:<port> → backend
        await mesh.apply(MESH_TIMEOUT_YAML)
        response = await client.get("backend", "/slow")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from control_plane.resources.registry import parse_resource, to_document
from control_plane.store.base import ResourceKey
from control_plane.xds.names import CLUSTER_TYPE, LISTENER_TYPE
from labkit.ports import free_port
from labkit.waiting import eventually
from tests.support.xds_control_plane import ControlPlane, Envoy, control_plane


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Reply | Awaitable[Reply]]


class HttpApp:
    """An HTTP/1.1 app with keep-alive (so connection limits and pools behave as with a real app),
    answering each request with what `handler` says; it counts the requests it got."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.open_connections = 0
        self.max_open_connections = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> HttpApp:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        self.max_open_connections = max(self.max_open_connections, self.open_connections)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request = _parse(head)
                length = int(request.headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                self.requests.append(request)
                reply = self.handler(request)
                if not isinstance(reply, Reply):
                    reply = await reply
                if reply.delay_s:
                    await asyncio.sleep(reply.delay_s)
                extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                writer.write(
                    f"HTTP/1.1 {reply.status} X\r\nContent-Length: {len(reply.body)}\r\n{extra}\r\n".encode()
                    + reply.body
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open_connections -= 1
            writer.close()


def _parse(head: str) -> Request:
    lines = head.split("\r\n")
    method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Request(method, path, headers)


def constant(body: bytes = b"ok", status: int = 200) -> Handler:
    return lambda _request: Reply(status, body)


@dataclass
class Proxy:
    name: str
    envoy: Envoy
    outbounds: dict[str, int] = field(default_factory=dict)  # service → its outbound port
    inbound_ports: list[int] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """ "address:port" of its (first) inbound: how it shows among its service's endpoints."""
        return f"127.0.0.1:{self.inbound_ports[0]}"

    async def get(self, service: str, path: str = "/", **kwargs: Any) -> httpx.Response:
        """A request into this proxy's outbound for `service` (as the app beside it would send)."""
        async with httpx.AsyncClient(timeout=kwargs.pop("timeout", 20), trust_env=False) as client:
            return await client.get(f"http://127.0.0.1:{self.outbounds[service]}{path}", **kwargs)

    async def stats(self, prefix: str) -> dict[str, int]:
        """Envoy's counters and gauges whose name starts with `prefix`."""
        text = await self.envoy.get(f"/stats?filter=^{prefix}")
        found = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                found[name] = int(value)
        return found

    async def config_dump(self) -> dict[str, Any]:
        return json.loads(await self.envoy.get("/config_dump"))

    async def cluster(self, name: str) -> dict[str, Any]:
        """The cluster `name` as Envoy runs it (from /config_dump)."""
        dump = await self.config_dump()
        for config in dump["configs"]:
            for active in config.get("dynamic_active_clusters", []):
                if active["cluster"]["name"] == name:
                    return active["cluster"]
        raise AssertionError(f"{self.name}'s Envoy has no active cluster {name!r}")

    async def hosts(self, cluster: str) -> dict[str, str]:
        """The endpoints of `cluster` as Envoy's /clusters shows them: "address:port" → health
        flags ("healthy", or e.g. "/failed_active_hc")."""
        found = {}
        for line in (await self.envoy.get("/clusters")).splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags":
                found[parts[1]] = parts[3]
        return found


@dataclass
class PolicyMesh:
    cp: ControlPlane
    binary: Path
    root: Path
    proxies: dict[str, Proxy] = field(default_factory=dict)
    apps: list[HttpApp] = field(default_factory=list)
    runtime: dict[str, Any] | None = None  # every Envoy's static runtime layer

    async def app(self, handler: Handler) -> HttpApp:
        app = await HttpApp(handler).start()
        self.apps.append(app)
        return app

    async def backend(
        self,
        name: str,
        service: str,
        handler: Handler,
        protocol: str = "http",
        *,
        concurrency: int | None = None,
        **tags: str,
    ) -> tuple[Proxy, HttpApp]:
        """An instance of `service`: its app and its Envoy, with one inbound to the app.
        `concurrency`: Envoy's worker threads (1: requests are handled in the order they come)."""
        app = await self.app(handler)
        inbound = {
            "port": free_port(),
            "servicePort": app.port,
            "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol, **tags},
        }
        return await self._proxy(name, {"inbound": [inbound]}, concurrency), app

    async def client(
        self, name: str, services: list[str], service: str | None = None, *, concurrency: int | None = None
    ) -> Proxy:
        """A caller: an Envoy with an outbound listener on 127.0.0.1 for each of `services`."""
        app = await self.app(constant())
        inbound = {"port": free_port(), "servicePort": app.port, "tags": {"kuma.io/service": service or name}}
        outbounds = {s: free_port() for s in services}
        networking = {
            "inbound": [inbound],
            "outbound": [{"port": port, "tags": {"kuma.io/service": s}} for s, port in outbounds.items()],
        }
        proxy = await self._proxy(name, networking, concurrency)
        proxy.outbounds = outbounds
        return proxy

    async def _proxy(self, name: str, networking: dict[str, Any], concurrency: int | None = None) -> Proxy:
        resource = {
            "type": "Dataplane",
            "mesh": "default",
            "name": name,
            "networking": {"address": "127.0.0.1", **networking},
        }
        envoy = Envoy(self.binary, self.root / name, self.cp.port, resource, concurrency, self.runtime)
        inbound_ports = [inbound["port"] for inbound in networking.get("inbound", [])]
        proxy = self.proxies[name] = Proxy(name, envoy, inbound_ports=inbound_ports)
        await self.converged()
        return proxy

    async def apply(self, *documents: str | dict[str, Any]) -> None:
        """Store policies (YAML text or documents) as `kumactl apply` does, then wait for Envoy."""
        for document in documents:
            docs = list(yaml.safe_load_all(document)) if isinstance(document, str) else [document]
            for doc in docs:
                stored = to_document(parse_resource(doc))
                key = ResourceKey(stored["type"], stored.get("mesh", ""), stored["name"])
                spec = {k: v for k, v in stored.items() if k not in ("type", "mesh", "name")}
                self.cp.store.upsert(key, spec)
        await self.converged()

    async def delete(self, kind: str, name: str) -> None:
        self.cp.store.delete(ResourceKey(kind, "default", name))
        await self.converged()

    async def converged(self, timeout: float = 20.0) -> None:
        """The control plane has built config from every change made so far, and every proxy has
        ACKed the clusters and listeners it now holds for it."""
        await asyncio.sleep(0)  # the store's change notices (call_soon_threadsafe) reach the reconciler
        await eventually(self._all_acked, timeout=timeout)

    async def _all_acked(self) -> bool:
        if not self.cp.component.reconciler.settled():
            return False
        for proxy in self.proxies.values():
            if proxy.envoy.process.poll() is not None:
                raise AssertionError(f"Envoy of {proxy.name} exited:\n{proxy.envoy.log.read_text()[-3000:]}")
            snapshot = self.cp.component.cache.get(f"default.{proxy.name}")
            if snapshot is None:
                return False
            try:
                dump = await proxy.config_dump()
            except (httpx.HTTPError, ValueError):
                return False
            configs = {c.get("@type", "").rsplit(".", 1)[-1]: c for c in dump["configs"]}
            versions = {kind: config.get("version_info") for kind, config in configs.items()}
            want = snapshot.versions()
            if versions.get("ClustersConfigDump") != want[CLUSTER_TYPE]:
                return False
            # A changed cluster is in use only once warm (its endpoints, and its first health
            # checks, are in); until then Envoy keeps sending traffic to the old one.
            if configs["ClustersConfigDump"].get("dynamic_warming_clusters"):
                return False
            if versions.get("ListenersConfigDump") != want[LISTENER_TYPE]:
                return False
        return True


@contextlib.asynccontextmanager
async def policy_mesh(
    binary: Path, root: Path, runtime: dict[str, Any] | None = None
) -> AsyncIterator[PolicyMesh]:
    """`runtime`: Envoy runtime values every proxy starts with (a static layer)."""
    async with control_plane(debounce_s=0.01) as cp:
        mesh = PolicyMesh(cp, binary, root, runtime=runtime)
        try:
            yield mesh
        except BaseException:
            for proxy in mesh.proxies.values():  # shown by pytest on failure
                print(f"--- {proxy.envoy.log}\n" + proxy.envoy.log.read_text(errors="replace")[-3000:])
            raise
        finally:
            for proxy in mesh.proxies.values():
                proxy.envoy.stop()
            for app in mesh.apps:
                await app.stop()


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started
