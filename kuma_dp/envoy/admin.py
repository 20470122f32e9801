"""Envoy's admin API, over TCP or a Unix socket, and reading its address from the bootstrap."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kuma_dp.errors import EnvoyError

_ADMIN_TIMEOUT_S = 2.0
_PER_THREAD_STAT = re.compile(r"\.(worker_\d+|main_thread)\.downstream_cx_active$")
_ADMIN_LISTENER_PREFIX = "listener.admin."
LDS_SUCCESS_STAT = "listener_manager.lds.update_success"
ACTIVE_LISTENERS_STAT = "listener_manager.total_listeners_active"


@dataclass(frozen=True)
class AdminAddress:
    """Either host+port or a Unix socket path (Envoy's `pipe`)."""

    host: str | None = None
    port: int | None = None
    pipe: Path | None = None

    def describe(self) -> str:
        return f"unix:{self.pipe}" if self.pipe else f"{self.host}:{self.port}"


def admin_address_from_bootstrap(bootstrap: Mapping[str, Any]) -> AdminAddress:
    """`admin.address.socket_address` {address, port_value} or `admin.address.pipe.path`."""
    address = (bootstrap.get("admin") or {}).get("address") or {}
    socket_address = address.get("socket_address") or address.get("socketAddress")
    if socket_address:
        port = socket_address.get("port_value", socket_address.get("portValue"))
        host = socket_address.get("address", "127.0.0.1")
        if port is None:
            raise EnvoyError("the bootstrap's admin.address.socket_address has no port_value")
        return AdminAddress(host=str(host), port=int(port))
    pipe = address.get("pipe") or {}
    if pipe.get("path"):
        return AdminAddress(pipe=Path(pipe["path"]))
    raise EnvoyError("the bootstrap from the control plane has no admin address (admin.address)")


def _base_url(address: AdminAddress) -> str:
    if address.pipe is not None:
        return "http://envoy-admin"
    host = address.host or "127.0.0.1"
    if host in ("0.0.0.0", "::"):  # listening on all interfaces: talk to it over loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://[{host}]:{address.port}" if ":" in host else f"http://{host}:{address.port}"


class EnvoyAdmin:
    """A small client of the admin endpoints the agent needs. Errors surface as httpx.HTTPError."""

    def __init__(self, address: AdminAddress, transport: httpx.AsyncBaseTransport | None = None) -> None:
        # Plain HTTP: verify=False spares loading the CA bundle (tens of ms at start-up).
        if transport is None and address.pipe is not None:
            transport = httpx.AsyncHTTPTransport(uds=str(address.pipe), verify=False)
        self.address = address
        self._client = httpx.AsyncClient(
            base_url=_base_url(address),
            transport=transport,
            timeout=_ADMIN_TIMEOUT_S,
            trust_env=False,
            verify=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def is_live(self) -> bool:
        """Admin `/ready` says LIVE (200)."""
        response = await self._client.get("/ready")
        return response.status_code == 200 and response.text.strip() == "LIVE"

    async def stats(self, filter_regex: str) -> dict[str, int]:
        """Counters and gauges whose names match the (RE2) regex."""
        response = await self._client.get("/stats", params={"filter": filter_regex, "format": "json"})
        response.raise_for_status()
        return {
            s["name"]: int(s["value"])
            for s in response.json().get("stats", [])
            if isinstance(s.get("value"), int)
        }

    async def has_listeners(self) -> bool:
        """At least one active listener, and, when LDS is configured, at least one LDS update applied.

        The LDS stat exists only when the bootstrap configures LDS, so a static bootstrap is ready
        with its static listeners alone.
        """
        stats = await self.stats(r"^listener_manager\.(lds\.update_success|total_listeners_active)$")
        if stats.get(ACTIVE_LISTENERS_STAT, 0) < 1:
            return False
        return stats.get(LDS_SUCCESS_STAT, 1) > 0

    async def active_downstream_connections(self) -> int:
        """Open downstream connections on every listener except the admin's."""
        stats = await self.stats(r"^listener\..*downstream_cx_active$")
        return sum(
            value
            for name, value in stats.items()
            if not name.startswith(_ADMIN_LISTENER_PREFIX) and not _PER_THREAD_STAT.search(name)
        )

    async def healthcheck_fail(self) -> None:
        (await self._client.post("/healthcheck/fail")).raise_for_status()

    async def drain_listeners(self, inbound_only: bool = False) -> None:
        """Stop listeners at once: new connections are refused, open ones carry on."""
        params = {"inboundonly": ""} if inbound_only else None
        (await self._client.post("/drain_listeners", params=params)).raise_for_status()
