"""The records source: polls `GET /dns` on Envoy's Unix socket in the work dir (the control plane
configures that listener; kuma_common/dp_contract.py) every 0.5 s, with If-None-Match.

A missing socket, a refused connection, an HTTP error or a body that is not the contract's keep the
last records (none at first) and are logged once per streak of failures: at debug level while
nothing was ever received (Envoy may not have its listener yet, or the control plane is older),
as a warning after that. Never raises, so it cannot take the agent down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import httpx

from kuma_common.dp_contract import DNS_RECORDS_PATH
from kuma_dp.dns.records import Records, RecordsError, parse_records

log = logging.getLogger("dns")


class RecordsSource:
    def __init__(
        self,
        socket_path: Path,
        interval: float,
        request_timeout: float,
        max_bytes: int,
        on_change: Callable[[Records], None],
    ) -> None:
        self.socket_path = socket_path
        self.interval = interval
        self.request_timeout = request_timeout
        self.max_bytes = max_bytes
        self.on_change = on_change
        self.etag: str | None = None
        self.received = False
        self._failing: str | None = None  # the failure being reported (logged once)
        self._failing_level = logging.DEBUG

    async def run(self) -> None:
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
        async with httpx.AsyncClient(transport=transport, timeout=self.request_timeout) as client:
            while True:
                await self.poll_once(client)
                await asyncio.sleep(self.interval)

    async def poll_once(self, client: httpx.AsyncClient) -> None:
        try:
            error = await self._fetch(client)
        except (httpx.HTTPError, OSError) as exc:
            error = f"cannot reach {self.socket_path}: {type(exc).__name__}: {exc}".rstrip(": ")
        if error is None:
            if self._failing is not None:
                level = logging.INFO if self._failing_level >= logging.WARNING else logging.DEBUG
                log.log(level, "DNS records: %s answers again", self.socket_path)
            self._failing = None
        elif self._failing is None:
            self._failing = error
            self._failing_level = logging.WARNING if self.received else logging.DEBUG
            log.log(self._failing_level, "DNS records: %s", error)

    async def _fetch(self, client: httpx.AsyncClient) -> str | None:
        """None when the records are current, else what went wrong."""
        if not self.socket_path.exists():
            return f"no socket at {self.socket_path} (yet)"
        headers = {"if-none-match": self.etag} if self.etag else {}
        async with client.stream("GET", f"http://kuma-dp{DNS_RECORDS_PATH}", headers=headers) as response:
            if response.status_code == 304:
                return None
            if response.status_code != 200:
                return f"GET {DNS_RECORDS_PATH}: HTTP {response.status_code}"
            etag = response.headers.get("etag")
            if etag is not None and etag == self.etag:
                return None  # a server that ignores If-None-Match: the body is the one we have
            body = await _read_capped(response, self.max_bytes)
        if body is None:
            return f"GET {DNS_RECORDS_PATH}: body larger than {self.max_bytes} bytes"
        try:
            records = parse_records(body)
        except RecordsError as exc:
            return f"GET {DNS_RECORDS_PATH}: {exc}"
        self.etag = etag
        self.received = True
        self.on_change(records)
        log.debug("DNS records: %d names (etag %s)", len(records.names), etag)
        return None


async def _read_capped(response: httpx.Response, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
