"""The lab's table: per host, its service's name and VIP, proxy state, certificate identity and
expiry, traffic figures.

`percentile` and `render` are pure; `envoy_certificate` reads what Envoy actually serves from its
admin API (a Unix socket in the agent's work dir).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

COLUMNS = (
    ("host", "host"),
    ("role", "role"),
    ("name", "name"),
    ("VIP", "vip"),
    ("address", "address"),
    ("proxy", "state"),
    ("identity", "identity"),
    ("cert expires (UTC)", "expires"),
    ("sent", "sent"),
    ("ok", "ok"),
    ("mTLS", "mtls"),
    ("p50 ms", "p50"),
    ("p99 ms", "p99"),
)


@dataclass
class Traffic:
    sent: int = 0
    ok: int = 0
    mtls: int = 0  # answers whose backend saw the caller's SPIFFE identity
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        lat = self.latencies_ms
        return {
            "sent": self.sent,
            "ok": self.ok,
            "mtls": self.mtls,
            "p50": percentile(lat, 50),
            "p99": percentile(lat, 99),
        }


@dataclass
class Row:
    host: str
    role: str
    address: str
    state: str
    name: str = "-"  # the service's DNS name (`backend.mesh`)
    vip: str = "-"  # its virtual IP, what the name resolves to
    identity: str = "-"
    expires: str = "-"
    traffic: Traffic | None = None

    def cells(self) -> list[str]:
        values: dict[str, object] = {**vars(self), **(self.traffic.summary() if self.traffic else {})}
        return [_cell(values.get(key)) for _, key in COLUMNS]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def render(rows: Sequence[Row]) -> str:
    table = [[title for title, _ in COLUMNS]] + [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def envoy_certificate(admin_socket: Path) -> tuple[str, str]:
    """(SPIFFE URIs, expiry) of the workload certificate Envoy serves; ("-", "-") if none."""
    transport = httpx.HTTPTransport(uds=str(admin_socket))
    with httpx.Client(transport=transport, base_url="http://envoy-admin", timeout=5) as admin:
        certs = admin.get("/certs").json().get("certificates", [])
    for entry in certs:
        for cert in entry.get("cert_chain", []):
            uris = [san["uri"] for san in cert.get("subject_alt_names", []) if "uri" in san]
            if uris:
                expires = str(cert.get("expiration_time", "-")).replace("T", " ").removesuffix("Z")
                return ", ".join(uris), expires
    return "-", "-"
