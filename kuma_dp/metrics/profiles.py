"""Which of Envoy's stats are served: MeshMetric's profiles and include/exclude selectors, Kuma's
semantics, applied to Envoy's Prometheus text without parsing it into objects (it is thousands of
lines; a family starts at its `# TYPE` line, as Envoy writes them). Pure.

A family is kept if a profile selects it, unless an `exclude` selector matches, unless an
`include` selector matches. With `Basic` the first profile (none given, or Basic without All),
series about the mesh's own plumbing are dropped too (an entity label naming an internal cluster or
listener), and a family left without series goes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from kuma_dp.metrics.settings import MetricsSettings, Selector

Select = Callable[[str], bool]


def _s(kind: str, *matches: str) -> list[Selector]:
    return [Selector(kind, m) for m in matches]


# Kuma's Basic profile (app/kuma-dp/pkg/dataplane/metrics/profiles.go), by family name.
BASIC = (
    *_s("Contains", "rq_time", "cx_length_ms", "cx_count", "_rq", "bytes", "timeout", "health_check"),
    *_s("Contains", "lb_healthy_panic", "cx_destroy"),
    *_s("Exact", "envoy_cluster_membership_degraded", "envoy_cluster_membership_healthy"),
    *_s("Contains", "error", "fail", "reset", "eject", "overflow", "cancelled", "max_duration_reached"),
    *_s("Contains", "no_cluster", "no_route", "no_filter_chain", "reject", "denied"),
    *_s("Contains", "days_until_first_cert_expiring"),
    *_s("Prefix", "envoy_server", "envoy_control_plane"),
    *_s("Contains", "rbac", "cx_active", "cx_connect"),
    *_s("Exact", "envoy_cluster_ssl_handshake", "envoy_cluster_membership_total"),
    *_s("Contains", "circuit_breakers", "cx_total", "ssl_handshake", "ssl_context_update_by_sds"),
    *_s("Prefix", "envoy_dns_filter", "envoy_dns_cares", "kuma_dp_dns"),
)
# Series whose entity label names one of these are the mesh's plumbing (Basic drops them): Kuma's
# list, and this control plane's own listeners (DNS records, metrics config).
BASIC_INTERNAL = (
    *_s("Prefix", "system_", "_", "_kuma:metrics:opentelemetry", "tracing"),
    *_s("Exact", "ads_cluster", "access_log_sink", "kuma:envoy:admin", "kuma:metrics:hijacker"),
    *_s("Exact", "kuma_dns_records", "kuma_meshmetric_config"),
)
ENTITY_LABELS = ("envoy_cluster_name", "envoy_http_conn_manager_prefix", "envoy_listener_address")
_ENTITY = re.compile(r"(?:^|[{,])(" + "|".join(ENTITY_LABELS) + r')="((?:[^"\\]|\\.)*)"')
_ORDER = {"All": 0, "Basic": 1, "None": 2}


class EnvoyFilter:
    """The compiled selection of one MetricsSettings."""

    def __init__(self, settings: MetricsSettings) -> None:
        profiles = sorted(dict.fromkeys(settings.profiles or ("Basic",)), key=_ORDER.__getitem__)
        self.select_all = "All" in profiles
        self.profile_selectors = BASIC if "Basic" in profiles else ()
        self.basic_first = profiles[0] == "Basic"
        self.include = settings.include
        self.exclude = settings.exclude

    def keeps_family(self, name: str) -> bool:
        keep = self.select_all or any(s.matches(name) for s in self.profile_selectors)
        if keep and any(s.matches(name) for s in self.exclude):
            keep = False
        if not keep and any(s.matches(name) for s in self.include):
            keep = True
        return keep

    def keeps_series(self, line: str) -> bool:
        """A sample line (Basic only): not about an internal cluster or listener."""
        if "{" not in line:
            return True
        labels = line[line.index("{") : line.rfind("}") + 1]
        return not any(s.matches(value) for _, value in _ENTITY.findall(labels) for s in BASIC_INTERNAL)

    def apply(self, text: str) -> str:
        """Envoy's Prometheus text, filtered."""
        out: list[str] = []
        for family, lines in _families(text.splitlines()):
            if family is not None and not self.keeps_family(family):
                continue
            if self.basic_first:
                header = [line for line in lines if line.startswith("#")]
                samples = [
                    line for line in lines if line and not line.startswith("#") and self.keeps_series(line)
                ]
                if not samples:
                    continue
                lines = header + samples
            out.extend(lines)
        return "\n".join(out) + "\n" if out else ""


def _families(lines: Iterable[str]) -> Iterable[tuple[str | None, list[str]]]:
    """(family name, its lines) in order; lines before any `# TYPE` come with None."""
    name: str | None = None
    current: list[str] = []
    for line in lines:
        if line.startswith("# TYPE "):
            if current:
                yield name, current
            parts = line.split()
            name, current = (parts[2] if len(parts) > 2 else None), [line]
        elif line.strip():
            current.append(line)
    if current:
        yield name, current
