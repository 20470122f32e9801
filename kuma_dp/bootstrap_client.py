"""POST /bootstrap to the control plane, with Kuma's retry rules."""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import json
import logging
import random
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kuma_common import dp_contract as contract
from kuma_common.version import __version__
from kuma_dp import constants as c
from kuma_dp.config import RunConfig
from kuma_dp.envoy.binary import EnvoyVersion
from kuma_dp.errors import BootstrapError, ConfigError
from kuma_dp.retry import retry_delay_s

log = logging.getLogger("bootstrap")
_MESSAGE_LIMIT = 2000


@dataclass(frozen=True)
class TrustedCa:
    """The CA the agent trusts for the control plane, and where it came from (for messages)."""

    pem: str
    source: str  # "--ca-cert-file /x/ca.pem" or "KUMA_CONTROL_PLANE_CA_CERT"


class BootstrapRefused(BootstrapError):
    """A final 4xx: `status` and the server's own words (`reason`)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"control plane refused the bootstrap request (HTTP {status}): {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class BootstrapResponse:
    bootstrap_yaml: bytes
    sidecar_configuration: dict[str, Any]


class Outcome(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    FATAL = "fatal"


def classify(status: int, body: bytes) -> Outcome:
    """Kuma's rule: 5xx and 404 with an empty body (Dataplane not yet known) are retried."""
    if 200 <= status < 300:
        return Outcome.OK
    if status >= 500 or (status == 404 and not body.strip()):
        return Outcome.RETRY
    return Outcome.FATAL


def load_trusted_ca(config: RunConfig) -> TrustedCa | None:
    if config.ca_cert_pem:
        return TrustedCa(config.ca_cert_pem, c.ENV_CA_CERT)
    if config.ca_cert_file is None:
        return None
    source = f"--ca-cert-file {config.ca_cert_file}"
    try:
        pem = config.ca_cert_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{source}: cannot read the CA certificate: {reason}") from None
    return TrustedCa(pem, source)


def ssl_context(ca: TrustedCa | None) -> ssl.SSLContext:
    """Verify the CP against the given CA only, or against the system store when none is given."""
    if ca is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cadata=ca.pem)
    except ssl.SSLError as exc:
        raise ConfigError(f"{ca.source}: not a PEM CA certificate ({exc.reason or exc})") from None


def agent_version() -> str:
    return __version__


def request_body(
    config: RunConfig, token: str, envoy: EnvoyVersion, ca: TrustedCa | None, workdir: Path
) -> dict[str, Any]:
    """The JSON body of POST /bootstrap (kuma_common/dp_contract.py)."""
    return contract.BootstrapRequest(
        mesh=config.mesh,
        name=config.name,
        proxyType=config.proxy_type,
        dataplaneToken=token,
        dataplaneResource=config.dataplane_json or "",
        version={
            "kumaDp": {"version": agent_version()},
            "envoy": {"version": envoy.version, "build": envoy.build},
        },
        caCert=ca.pem if ca else "",
        dynamicMetadata={},
        readinessPort=config.readiness_port,
        workdir=str(workdir.absolute()),
        features=[],
    ).to_json()


def parse_response(body: bytes) -> BootstrapResponse:
    try:
        document = json.loads(body)
        bootstrap = base64.b64decode(document[contract.BOOTSTRAP_FIELD], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BootstrapError(f"the control plane sent an unreadable bootstrap response ({exc})") from None
    return BootstrapResponse(bootstrap, document.get(contract.SIDECAR_CONFIGURATION_FIELD) or {})


def server_message(body: bytes) -> str:
    """The server's own words: Kuma's error JSON `title`/`details`/`causes`, else the raw text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        return text[:_MESSAGE_LIMIT] or "(empty body)"
    if not isinstance(document, dict):
        return text[:_MESSAGE_LIMIT]
    parts: list[str] = []
    for key in ("title", "message", "detail", "details"):  # Kuma repeats title in details
        if document.get(key) and str(document[key]) not in parts:
            parts.append(str(document[key]))
    causes = document.get("causes")
    if isinstance(causes, list):
        parts += [f"{x.get('field')}: {x.get('message')}" for x in causes if isinstance(x, dict)]
    return "; ".join(parts)[:_MESSAGE_LIMIT] if parts else text[:_MESSAGE_LIMIT]


def is_tls_verification_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


async def fetch_bootstrap(
    config: RunConfig, body: dict[str, Any], ca: TrustedCa | None, rng: random.Random | None = None
) -> BootstrapResponse:
    """POST until success; retry connection errors, 5xx and empty 404 with jittered backoff
    (kuma_dp.retry) up to the max duration."""
    rng = rng or random.Random()
    url = f"{config.cp_address}{contract.BOOTSTRAP_PATH}"
    deadline = time.monotonic() + config.retry_max_duration_s
    async with httpx.AsyncClient(
        verify=ssl_context(ca), timeout=c.BOOTSTRAP_REQUEST_TIMEOUT_S, trust_env=False
    ) as client:
        attempt = 0
        while True:
            attempt += 1
            reason = await _attempt(client, url, body, ca)
            if isinstance(reason, BootstrapResponse):
                return reason
            delay = retry_delay_s(config.retry_backoff_s, rng)
            if time.monotonic() + delay > deadline:
                raise BootstrapError(
                    f"could not get a bootstrap from the control plane at {config.cp_address} within "
                    f"{config.retry_max_duration_s:g}s ({attempt} attempts; last: {reason})"
                )
            log.info("bootstrap attempt %d failed (%s); retrying in %.1fs", attempt, reason, delay)
            await asyncio.sleep(delay)


async def _attempt(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], ca: TrustedCa | None
) -> BootstrapResponse | str:
    """One request: the response, or the reason to retry. Fatal outcomes raise BootstrapError."""
    try:
        response = await client.post(url, json=body)
    except httpx.HTTPError as exc:
        if is_tls_verification_failure(exc):
            trusted = ca.source if ca else "the system trust store (give --ca-cert-file)"
            raise BootstrapError(
                f"TLS verification of the control plane at {url} failed against {trusted}: {exc}"
            ) from None
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    outcome = classify(response.status_code, response.content)
    if outcome is Outcome.OK:
        return parse_response(response.content)
    if outcome is Outcome.RETRY:
        detail = (
            "Dataplane not yet known" if response.status_code == 404 else server_message(response.content)
        )
        return f"HTTP {response.status_code}: {detail}"
    raise BootstrapRefused(response.status_code, server_message(response.content))


async def bootstrap_once(
    config: RunConfig, body: dict[str, Any], ca: TrustedCa | None
) -> BootstrapResponse | str:
    """One POST /bootstrap: the response, or why it may be retried; BootstrapRefused if final."""
    async with httpx.AsyncClient(
        verify=ssl_context(ca), timeout=c.BOOTSTRAP_REQUEST_TIMEOUT_S, trust_env=False
    ) as client:
        return await _attempt(client, f"{config.cp_address}{contract.BOOTSTRAP_PATH}", body, ca)
