"""Getting the workload certificate at start-up and keeping it fresh (docs/identity.md).

Start-up follows the bootstrap's retry rules (the jittered constant backoff up to the max
duration; final 4xx fatal). Renewal runs for the agent's lifetime: at 80 % of the lifetime
(+- 5 points of jitter) a new key and CSR; failures are retried with backoff 1 s doubling to
30 s and never end the agent.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from collections.abc import Sequence

from kuma_dp import constants as c
from kuma_dp.identity import keygen
from kuma_dp.identity.client import CertificateClient, IdentityError, IssuedCertificate
from kuma_dp.identity.sds import IdentityFilesError, IdentityPaths, write_identity
from kuma_dp.retry import retry_delay_s

log = logging.getLogger("identity")


def renewal_delay_s(remaining_s: float, jitter: float) -> float:
    """Seconds until renewal for a certificate with `remaining_s` to live; `jitter` in [-1, 1]."""
    fraction = c.RENEWAL_FRACTION + c.RENEWAL_JITTER * max(-1.0, min(1.0, jitter))
    return max(0.0, remaining_s * fraction)


def next_backoff_s(previous_s: float | None) -> float:
    if previous_s is None:
        return c.RENEWAL_BACKOFF_INITIAL_S
    return min(previous_s * 2, c.RENEWAL_BACKOFF_MAX_S)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class WorkloadIdentity:
    """The agent's key and certificate: files on disk, the key also in memory (never logged)."""

    def __init__(self, client: CertificateClient, paths: IdentityPaths, uris: Sequence[str]) -> None:
        self._client = client
        self.paths = paths
        self.uris = tuple(uris)
        self.current: IssuedCertificate | None = None
        self._key_pem: bytes | None = None  # the key in memory, for the life of its certificate
        self._next: asyncio.Future[keygen.KeyAndCsr] | None = None

    def pregenerate(self, early: keygen.EarlyKeygen | None = None) -> None:
        """Start making the first key and CSR now (overlaps the bootstrap request), or collect the
        child `kuma-dp run` started before the agent was even imported."""
        self._next = asyncio.ensure_future(early.result() if early else keygen.generate(self.uris))

    async def cancel_pregenerated(self) -> None:
        """Stop an unused key child and wait until it is reaped (before the event loop closes)."""
        pending, self._next = self._next, None
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)

    def __repr__(self) -> str:
        return f"WorkloadIdentity(uris={self.uris}, serial={self.current.serial if self.current else None})"

    async def _attempt(self) -> IssuedCertificate | str:
        """New key, CSR, request; on success the files are swapped. Returns a retry reason or raises."""
        pending, self._next = self._next, None
        material = await (pending if pending is not None else keygen.generate(self.uris))
        issued = await self._client.request(material.csr_pem)
        if isinstance(issued, str):
            return issued
        try:
            write_identity(self.paths, material.key_pem, issued.certificate_pem, issued.ca_bundle_pem)
        except OSError as exc:
            raise IdentityFilesError(
                f"cannot write the identity files in {self.paths.directory}: {exc.strerror or exc}"
            ) from None
        self.current, self._key_pem = issued, material.key_pem
        return issued

    async def obtain_at_start(
        self, backoff_s: float, max_duration_s: float, rng: random.Random | None = None
    ) -> IssuedCertificate:
        """Retried with the bootstrap's jittered backoff (kuma_dp.retry) up to `max_duration_s`."""
        rng = rng or random.Random()
        deadline = time.monotonic() + max_duration_s
        attempt = 0
        while True:
            attempt += 1
            result = await self._attempt()
            if isinstance(result, IssuedCertificate):
                self._log_issued("workload certificate issued", result)
                return result
            delay = retry_delay_s(backoff_s, rng)
            if time.monotonic() + delay > deadline:
                raise IdentityError(
                    f"could not get a workload certificate from {self._client.url} within "
                    f"{max_duration_s:g}s ({attempt} attempts; last: {result})"
                )
            log.info("certificate attempt %d failed (%s); retrying in %.1fs", attempt, result, delay)
            await asyncio.sleep(delay)

    async def renew_forever(self, rng: random.Random | None = None) -> None:
        """Until cancelled: sleep to the renewal time, renew (retrying), repeat."""
        rng = rng or random.Random()
        while True:
            assert self.current is not None, "renewal starts after the first certificate"
            remaining = (self.current.not_after - _now()).total_seconds()
            delay = renewal_delay_s(remaining, rng.uniform(-1.0, 1.0))
            log.info("renewing the workload certificate in %.1fs", delay)
            await asyncio.sleep(delay)
            await self.renew_once()

    async def renew_once(self) -> IssuedCertificate:
        """Renew, retrying with backoff until it works. WARNING while the old certificate is still
        valid, ERROR once it has expired; any failure (CP away, token refused) is retried, because
        a fixed token file or a recovered CP must heal the agent without a restart."""
        backoff: float | None = None
        while True:
            try:
                result = await self._attempt()
            except (IdentityError, IdentityFilesError, keygen.KeygenError) as exc:
                result = str(exc)
            if isinstance(result, IssuedCertificate):
                self._log_issued("workload certificate renewed", result)
                return result
            backoff = next_backoff_s(backoff)
            self._log_failure(result, backoff)
            await asyncio.sleep(backoff)

    def _log_failure(self, reason: str, backoff: float) -> None:
        assert self.current is not None
        until = self.current.not_after.isoformat()
        if _now() < self.current.not_after:
            log.warning(
                "certificate renewal failed (%s); retrying in %gs; the current certificate is valid until %s",
                reason,
                backoff,
                until,
            )
        else:
            log.error(
                "the workload certificate EXPIRED at %s and renewal keeps failing (%s); retrying in %gs",
                until,
                reason,
                backoff,
            )

    def _log_issued(self, what: str, issued: IssuedCertificate) -> None:
        log.info(
            "%s: serial %s, %s, valid until %s; SDS files in %s",
            what,
            issued.serial,
            ", ".join(self.uris) or "the services the control plane allows",
            issued.not_after.isoformat(),
            self.paths.sds_directory,
        )
