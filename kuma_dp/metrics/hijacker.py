"""The metrics hijacker: answers Envoy's forwarded scrapes on a Unix socket in the work dir.

Envoy's metrics listener (MeshMetric) sends `GET /meshmetric?<the scraper's query>` here. Each
scrape fetches, concurrently and each within `timeout_s`, Envoy's stats from its admin API
(`/stats?format=prometheus&text_readouts[&usedonly]`, with the scraper's query parameters: they
are for Envoy only) and every application's endpoint; filters Envoy's by the profiles; merges; and
answers in the format the scraper's Accept header prefers (exposition.py). A slow or dead
application costs at most `timeout_s` and only its own series; a failing Envoy leaves the
applications' series, and only when nothing answered is the scrape a 503.

A hand-written HTTP/1.1 responder (one path, one request per connection), like the readiness
endpoint: the agent stays small and Envoy is its only client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import httpx
from prometheus_client.metrics_core import Metric

from kuma_common.dp_contract import METRICS_HIJACKER_PATH
from kuma_dp.envoy.admin import AdminAddress
from kuma_dp.metrics.exposition import CONTENT_TYPES, ExpositionError, merged, negotiate, parse
from kuma_dp.metrics.profiles import EnvoyFilter
from kuma_dp.metrics.settings import Application, MetricsSettings

log = logging.getLogger("metrics")

SOCKET_MODE = 0o600
_HEADER_TIMEOUT_S = 5.0
_MAX_HEADER_LINES = 100
_MAX_BODY_BYTES = 32 * 1024 * 1024  # an application answering more is cut off (left out)
_SCRAPE_TIMEOUT_MARGIN_S = 0.25  # answer before the scraper's own deadline
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class Hijacker:
    def __init__(self, socket_path: Path, admin: AdminAddress, timeout_s: float) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.settings = MetricsSettings()
        self._filter = EnvoyFilter(self.settings)
        self._admin = _admin_client(admin)
        self._apps = httpx.AsyncClient(trust_env=False, verify=False, follow_redirects=False)
        self._failing: set[str] = set()  # sources whose failure was logged (once per streak)

    def update(self, settings: MetricsSettings) -> None:
        self.settings = settings
        self._filter = EnvoyFilter(settings)

    async def serve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # left by a previous run in the same work dir
        old_umask = os.umask(0o177)  # created 0600: no window where others could connect
        try:
            server = await asyncio.start_unix_server(self._handle, path=str(self.socket_path))
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, SOCKET_MODE)
        try:
            async with server:
                await server.serve_forever()
        finally:
            await self._admin.aclose()
            await self._apps.aclose()
            with contextlib.suppress(OSError):
                self.socket_path.unlink()

    async def scrape(
        self, query: str, accept: str | None, scrape_timeout: str | None
    ) -> tuple[int, str, bytes]:
        """(status, content type, body) of one scrape."""
        timeout = self._timeout(scrape_timeout)
        settings, envoy_filter = self.settings, self._filter
        envoy, *apps = await asyncio.gather(
            self._envoy_stats(query, settings, timeout),
            *(self._application(app, timeout) for app in settings.applications),
        )
        scraped = [a for a in apps if a is not None]
        if envoy is None and not scraped:
            return 503, "text/plain; charset=utf-8", b"neither Envoy nor any application answered\n"
        fmt = negotiate(accept)
        envoy_text = envoy_filter.apply(envoy) if envoy else ""
        try:
            body = merged(envoy_text, scraped, fmt)
        except Exception as exc:  # an application family prometheus_client cannot write
            self._failed("merge", f"applications' series not written: {type(exc).__name__}: {exc}")
            body = merged(envoy_text, [], fmt)
        else:
            self._recovered("merge")
        return 200, CONTENT_TYPES[fmt], body

    def _timeout(self, scrape_timeout: str | None) -> float:
        try:
            asked = float(scrape_timeout) - _SCRAPE_TIMEOUT_MARGIN_S if scrape_timeout else None
        except ValueError:
            asked = None
        return max(0.1, min(self.timeout_s, asked)) if asked is not None else self.timeout_s

    async def _envoy_stats(self, query: str, settings: MetricsSettings, timeout: float) -> str | None:
        params = [
            (k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in ("format", "usedonly")
        ]
        params += [("format", "prometheus"), ("text_readouts", "")]
        if not settings.include_unused:
            params.append(("usedonly", ""))
        try:
            response = await asyncio.wait_for(self._admin.get("/stats?" + urlencode(params)), timeout)
            response.raise_for_status()
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            self._failed("envoy", f"Envoy's stats: {type(exc).__name__}: {exc}")
            return None
        self._recovered("envoy")
        return response.text

    async def _application(self, app: Application, timeout: float) -> tuple[str, list[Metric]] | None:
        key = f"app:{app.name}"
        try:
            body, content_type = await asyncio.wait_for(self._fetch(app), timeout)
            families = parse(body, content_type)
        except (httpx.HTTPError, OSError, TimeoutError, ExpositionError) as exc:
            self._failed(key, f"application {app.name} ({app.url}): {type(exc).__name__}: {exc}")
            return None
        self._recovered(key)
        return app.name, families

    async def _fetch(self, app: Application) -> tuple[str, str]:
        headers = {
            "accept": "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;version=0.0.4;q=0.5"
        }
        async with self._apps.stream("GET", app.url, headers=headers) as response:
            response.raise_for_status()
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > _MAX_BODY_BYTES:
                    raise ExpositionError(f"body larger than {_MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks).decode("utf-8", "replace"), response.headers.get("content-type", "")

    def _failed(self, key: str, message: str) -> None:
        if key not in self._failing:
            self._failing.add(key)
            log.warning("metrics: %s (its series are left out of scrapes until it answers)", message)

    def _recovered(self, key: str) -> None:
        if key in self._failing:
            self._failing.discard(key)
            log.info("metrics: %s answers again", key.removeprefix("app:"))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), _HEADER_TIMEOUT_S)
            if request is None:
                return
            method, target, headers = request
            path, _, query = target.partition("?")
            if method != "GET":
                status, content_type, body = 405, "text/plain", b"only GET\n"
            elif path != METRICS_HIJACKER_PATH:
                status, content_type, body = 404, "text/plain", b"not found\n"
            else:
                status, content_type, body = await self.scrape(
                    query, headers.get("accept"), headers.get("x-prometheus-scrape-timeout-seconds")
                )
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: {content_type}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    line = await reader.readline()
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        return None
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADER_LINES):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            return parts[0], parts[1], headers
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return None


def _admin_client(admin: AdminAddress) -> httpx.AsyncClient:
    if admin.pipe is not None:
        transport = httpx.AsyncHTTPTransport(uds=str(admin.pipe), verify=False)
        return httpx.AsyncClient(
            base_url="http://envoy-admin", transport=transport, trust_env=False, verify=False
        )
    host = admin.host or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    base = f"http://[{host}]:{admin.port}" if ":" in host else f"http://{host}:{admin.port}"
    return httpx.AsyncClient(base_url=base, trust_env=False, verify=False)
