"""`POST /certificate` on the DP server: a CSR and the token in, the signed leaf and the mesh CA out."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass

import httpx

from kuma_common import dp_contract as contract
from kuma_dp import bootstrap_client as bc
from kuma_dp.constants import CERTIFICATE_REQUEST_TIMEOUT_S
from kuma_dp.errors import AgentError
from kuma_dp.token_source import TokenSource


class IdentityError(AgentError):
    """No workload certificate could be obtained at start-up; the message says why."""


class CertificateRefused(IdentityError):
    """The control plane answered with a final 4xx (token, CSR): retrying the same request is useless."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"control plane refused the certificate request (HTTP {status}): {message}")
        self.status = status


class NoCertificateEndpoint(IdentityError):
    """A control plane without `/certificate` (404 with a non-JSON body, e.g. an older CP)."""


@dataclass(frozen=True)
class IssuedCertificate:
    certificate_pem: str
    ca_bundle_pem: str
    not_after: datetime.datetime
    serial: str  # hex, for logs


def parse_issued(body: bytes) -> IssuedCertificate:
    """The 200 answer; IdentityError when it is unreadable. (Whether the leaf matches our key is
    checked when the files are staged, with the stdlib's TLS code.)"""
    try:
        document = json.loads(body)
        issued = IssuedCertificate(
            certificate_pem=str(document[contract.CERTIFICATE_FIELD]),
            ca_bundle_pem=str(document[contract.CA_BUNDLE_FIELD]),
            not_after=datetime.datetime.fromisoformat(str(document[contract.NOT_AFTER_FIELD])),
            serial=str(document.get(contract.SERIAL_FIELD, "")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise IdentityError(f"the control plane sent an unreadable certificate response ({exc})") from None
    if issued.not_after.tzinfo is None:
        raise IdentityError(f"the control plane sent a notAfter without a time zone ({issued.not_after})")
    if _PEM_CERTIFICATE not in issued.certificate_pem or _PEM_CERTIFICATE not in issued.ca_bundle_pem:
        raise IdentityError("the control plane sent a certificate response without PEM certificates")
    return issued


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


class CertificateClient:
    """One HTTPS client for every CSR of this agent; the token is taken fresh for each request."""

    def __init__(
        self,
        cp_address: str,
        ca: bc.TrustedCa | None,
        mesh: str,
        name: str,
        tokens: TokenSource,
        dataplane_json: str | None = None,
    ) -> None:
        self.url = f"{cp_address}{contract.CERTIFICATE_PATH}"
        self._mesh, self._name, self._tokens, self._ca = mesh, name, tokens, ca
        self._dataplane_json = dataplane_json or ""
        self._client = httpx.AsyncClient(
            verify=bc.ssl_context(ca), timeout=CERTIFICATE_REQUEST_TIMEOUT_S, trust_env=False
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, csr_pem: bytes) -> IssuedCertificate | str:
        """One attempt: the certificate, or the reason to retry. Final refusals raise."""
        token = self._tokens.current()
        headers = {contract.TOKEN_HEADER: token} if token else {}
        body = contract.CertificateRequest(
            mesh=self._mesh, name=self._name, csr=csr_pem.decode(), dataplane=self._dataplane_json
        )
        try:
            response = await self._client.post(self.url, json=body.to_json(), headers=headers)
        except httpx.HTTPError as exc:
            if bc.is_tls_verification_failure(exc):
                trusted = self._ca.source if self._ca else "the system trust store (give --ca-cert-file)"
                raise IdentityError(
                    f"TLS verification of the control plane at {self.url} failed against {trusted}: {exc}"
                ) from None
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        status, content = response.status_code, response.content
        outcome = bc.classify(status, content)
        if outcome is bc.Outcome.OK:
            return parse_issued(content)
        if outcome is bc.Outcome.RETRY:
            return (
                f"HTTP {status}: {'Dataplane not yet known' if status == 404 else bc.server_message(content)}"
            )
        if status == 404 and not _is_json(content):
            raise NoCertificateEndpoint(
                f"the control plane has no {contract.CERTIFICATE_PATH} endpoint ({self.url})"
            )
        raise CertificateRefused(status, bc.server_message(content))
