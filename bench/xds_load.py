"""N simulated proxies: real gRPC ADS streams over TLS to kuma-cp, subscribing and ACKing as Envoy does.

Run `python -m bench.xds_load --target localhost:5678 --ca-cert <workdir>/kuma-cp.crt --proxies P.json`
where P.json is `{"mesh": ..., "proxies": [{"name", "token", "dataplane": {...}}]}` (0600: it
holds tokens). Commands come on stdin, one JSON object a line; events go to stdout, one a line:

- `{"cmd": "connect"}` opens every stream at once (a fleet reconnecting) and answers
  `{"event": "connected", "started": t, "first_config": {name: t}, "missing": [names]}`.
- `{"cmd": "watch", "address": "10.255.0.1"}` answers `{"event": "watching"}` at once, then, when
  every proxy has ACKed an EDS *and* an LDS response holding that address (a new endpoint of a
  service, and with transparent proxying its outbound listener), `{"event": "changed",
  "eds": {name: t}, "lds": {name: t}, "missing": [names]}`.
- `{"cmd": "close"}` ends every stream: `{"event": "closed"}`. End of input exits.

Times are `time.monotonic()` (CLOCK_MONOTONIC: one clock for every process of the machine), so
the caller subtracts its own start. Like Envoy: one TLS connection per proxy (a channel with its
own subchannel pool), node sent on the first request only, `authorization` initial metadata, CDS
first, EDS for the EDS clusters it got (sent before the CDS ACK), LDS once clusters are warm
(Envoy starts LDS after the cluster manager initialised), every response ACKed with its
version_info and nonce, never a NACK.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from control_plane.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, short_type
from kuma_common import dp_contract as contract

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DEFAULT_TIMEOUT_S = 120.0
MAX_MESSAGE_BYTES = 256 * 2**20
CHANNEL_OPTIONS = (
    ("grpc.use_local_subchannel_pool", 1),  # one TCP/TLS connection per proxy, as N Envoys have
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)


@dataclass
class Watch:
    needle: bytes
    eds: float | None = None
    lds: float | None = None


@dataclass
class SimProxy:
    """One simulated Envoy: its stream state and the times the benchmark wants."""

    name: str
    node: base_pb2.Node
    token: str
    eds_names: tuple[str, ...] = ()
    eds_version: str = ""
    eds_nonce: str = ""
    lds_started: bool = False
    acked: set[str] = field(default_factory=set)
    received: Counter[str] = field(default_factory=Counter)  # type URL → responses
    received_bytes: int = 0
    first_config: float | None = None
    watch: Watch | None = None
    error: str = ""

    async def run(self, channel: grpc.aio.Channel) -> None:
        # Responses arrive as bytes: parsed once in C, searched for the watched address as bytes
        # (the load process must cost the machine as little as it can; the CP is measured).
        stream = channel.stream_stream(
            ADS_METHOD, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString
        )
        client = _Requests(self.node)
        client.send(CLUSTER_TYPE)
        call = stream(client.outgoing(), metadata=((contract.TOKEN_HEADER, self.token),))
        try:
            async for raw in call:
                self._on_response(client, discovery_pb2.DiscoveryResponse.FromString(raw), raw)
            self.error = "the server ended the stream"
        except grpc.aio.AioRpcError as exc:
            self.error = f"{exc.code().name}: {exc.details()}"
        finally:
            client.close()
            call.cancel()

    def _on_response(self, client: _Requests, response: discovery_pb2.DiscoveryResponse, raw: bytes) -> None:
        type_url = response.type_url
        if type_url == CLUSTER_TYPE:
            names = tuple(sorted(_eds_clusters(response)))
            if names != self.eds_names:
                self.eds_names = names
                client.send(ENDPOINT_TYPE, self.eds_version, self.eds_nonce, names)
            client.ack(response)
            if not names:
                self._start_lds(client)
        elif type_url == ENDPOINT_TYPE:
            self.eds_version, self.eds_nonce = response.version_info, response.nonce
            client.ack(response, self.eds_names)
            self._start_lds(client)
        else:
            client.ack(response)
        now = time.monotonic()
        self.acked.add(type_url)
        self.received[short_type(type_url)] += 1
        self.received_bytes += len(raw)
        wanted = {CLUSTER_TYPE, LISTENER_TYPE, *((ENDPOINT_TYPE,) if self.eds_names else ())}
        if self.first_config is None and wanted <= self.acked:
            self.first_config = now
        self._check_watch(type_url, raw, now)

    def _start_lds(self, client: _Requests) -> None:
        if not self.lds_started:
            self.lds_started = True
            client.send(LISTENER_TYPE)

    def _check_watch(self, type_url: str, raw: bytes, now: float) -> None:
        watch = self.watch
        if watch is None or watch.needle not in raw:
            return
        if type_url == ENDPOINT_TYPE and watch.eds is None:
            watch.eds = now
        elif type_url == LISTENER_TYPE and watch.lds is None:
            watch.lds = now


class _Requests:
    """The request side of one stream: queued, node on the first request only (as Envoy)."""

    def __init__(self, node: base_pb2.Node) -> None:
        self._node: base_pb2.Node | None = node
        self._queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

    def send(self, type_url: str, version: str = "", nonce: str = "", names: tuple[str, ...] = ()) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, version_info=version, response_nonce=nonce, resource_names=names
        )
        if self._node is not None:
            request.node.CopyFrom(self._node)
            self._node = None
        self._queue.put_nowait(request)

    def ack(self, response: discovery_pb2.DiscoveryResponse, names: tuple[str, ...] = ()) -> None:
        self.send(response.type_url, response.version_info, response.nonce, names)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def outgoing(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await self._queue.get()) is not None:
            yield request


def _eds_clusters(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    names = []
    for packed in response.resources:
        cluster = cluster_pb2.Cluster()
        packed.Unpack(cluster)
        if cluster.type == cluster_pb2.Cluster.EDS:
            names.append(cluster.eds_cluster_config.service_name or cluster.name)
    return names


def make_node(mesh: str, entry: Mapping[str, Any], send_resource: bool) -> base_pb2.Node:
    """The node a kuma-dp bootstrap gives Envoy (control_plane/bootstrap/render.py's metadata)."""
    dataplane = entry["dataplane"]
    inbound = dataplane["networking"]["inbound"]
    node = base_pb2.Node(id=f"{mesh}.{entry['name']}", cluster=inbound[0]["tags"]["kuma.io/service"])
    metadata: dict[str, Any] = {
        contract.PROXY_TYPE_METADATA_KEY: contract.DATAPLANE_PROXY_TYPE,
        contract.WORKDIR_METADATA_KEY: f"/tmp/xds-load/{entry['name']}",
        contract.VERSION_METADATA_KEY: {"kumaDp": {"version": "bench"}, "envoy": {"version": "1.40.0"}},
        contract.FEATURES_METADATA_KEY: [],
        contract.DYNAMIC_METADATA_KEY: {},
    }
    if send_resource:
        metadata[contract.RESOURCE_METADATA_KEY] = json.dumps(dataplane)
    node.metadata.update(metadata)
    return node


class Fleet:
    def __init__(self, target: str, ca_cert: bytes, proxies: list[SimProxy]) -> None:
        self._target = target
        self._credentials = grpc.ssl_channel_credentials(root_certificates=ca_cert)
        self.proxies = proxies
        self._channels: list[grpc.aio.Channel] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self, timeout: float) -> dict[str, Any]:
        await self.close()
        for proxy in self.proxies:
            proxy.first_config, proxy.acked, proxy.lds_started, proxy.error = None, set(), False, ""
            proxy.received, proxy.received_bytes = Counter(), 0
            proxy.eds_names, proxy.eds_version, proxy.eds_nonce = (), "", ""
        started = time.monotonic()
        for proxy in self.proxies:
            channel = grpc.aio.secure_channel(self._target, self._credentials, options=CHANNEL_OPTIONS)
            self._channels.append(channel)
            self._tasks.append(asyncio.create_task(proxy.run(channel)))
        await _until(lambda: all(p.first_config is not None or p.error for p in self.proxies), timeout)
        return {
            "event": "connected",
            "started": started,
            "first_config": {p.name: p.first_config for p in self.proxies if p.first_config is not None},
            "missing": [p.name for p in self.proxies if p.first_config is None],
            "errors": sorted({p.error for p in self.proxies if p.error})[:5],
            **self._traffic(),
        }

    def _traffic(self) -> dict[str, Any]:
        """Responses and bytes received by all proxies so far (since connecting)."""
        total: Counter[str] = Counter()
        for proxy in self.proxies:
            total.update(proxy.received)
        return {"responses": dict(total), "bytes": sum(p.received_bytes for p in self.proxies)}

    def arm(self, address: str) -> None:
        for proxy in self.proxies:
            proxy.watch = Watch(address.encode())

    async def changed(self, timeout: float) -> dict[str, Any]:
        await _until(lambda: all(_changed(p) for p in self.proxies), timeout)
        watches = [(p.name, p.watch) for p in self.proxies if p.watch is not None]
        return {
            "event": "changed",
            "eds": {name: w.eds for name, w in watches if w.eds is not None},
            "lds": {name: w.lds for name, w in watches if w.lds is not None},
            "missing": [p.name for p in self.proxies if not _changed(p)],
            **self._traffic(),
        }

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._channels), return_exceptions=True)
        self._tasks, self._channels = [], []


def _changed(proxy: SimProxy) -> bool:
    return proxy.error != "" or (
        proxy.watch is not None and proxy.watch.eds is not None and proxy.watch.lds is not None
    )


async def _until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


def emit(event: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def serve(fleet: Fleet, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            cmd = command.get("cmd")
            if cmd == "connect":
                emit(await fleet.connect(float(command.get("timeout", timeout))))
            elif cmd == "watch":
                # Armed before answering: the caller makes the change only once every proxy watches.
                fleet.arm(command["address"])
                emit({"event": "watching"})
                emit(await fleet.changed(float(command.get("timeout", timeout))))
            elif cmd == "close":
                await fleet.close()
                emit({"event": "closed"})
            else:
                emit({"event": "error", "message": f"unknown command {cmd!r}"})
    finally:
        await fleet.close()


def load_proxies(path: Path, send_resource: bool) -> tuple[str, list[SimProxy]]:
    doc = json.loads(path.read_text())
    mesh = doc["mesh"]
    proxies = [
        SimProxy(entry["name"], make_node(mesh, entry, send_resource), entry["token"])
        for entry in doc["proxies"]
    ]
    return mesh, proxies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--target", required=True, help="the CP's DP server, host:port (TLS)")
    parser.add_argument("--ca-cert", required=True, type=Path, help="<workdir>/kuma-cp.crt")
    parser.add_argument(
        "--proxies", required=True, type=Path, help="JSON: mesh, proxies[{name, token, dataplane}]"
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument(
        "--no-resource",
        action="store_true",
        help="no `dataplane.resource` (Dataplanes applied with kumactl; `kuma-dp run` without -d)",
    )
    args = parser.parse_args(argv)
    try:
        ca_cert = args.ca_cert.read_bytes()
        _, proxies = load_proxies(args.proxies, not args.no_resource)
    except (OSError, ValueError, KeyError) as exc:
        sys.exit(f"xds_load: cannot read the inputs: {exc}")
    asyncio.run(serve(Fleet(args.target, ca_cert, proxies), args.timeout))


if __name__ == "__main__":
    main()
