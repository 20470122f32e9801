"""Merging Envoy's series with the applications' and writing them in the format the scraper
asked for (its Accept header): Prometheus text 0.0.4 or OpenMetrics 1.0. Pure.

Parsing and writing are prometheus_client's. Envoy's (already filtered) text is passed through as
Envoy wrote it (in OpenMetrics, with its `# TYPE` lines adapted); only the applications' bodies
are parsed and rewritten. Every
application series gets the label `kuma_application="<name>"` (unless it has one), so its origin
shows in queries; Envoy's series stay as Envoy names them (`envoy_*`). An application body that
does not parse is left out (the caller logs it); Envoy's series never depend on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import exposition as text_exposition
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

APPLICATION_LABEL = "kuma_application"
TEXT = "text"
OPENMETRICS = "openmetrics"
CONTENT_TYPES = {TEXT: text_exposition.CONTENT_TYPE_LATEST, OPENMETRICS: om_exposition.CONTENT_TYPE_LATEST}


class ExpositionError(ValueError):
    """A body that is not Prometheus text / OpenMetrics."""


@dataclass(frozen=True)
class Scraped:
    """One application's answer."""

    name: str
    body: str
    content_type: str


def negotiate(accept: str | None) -> str:
    """OPENMETRICS if the scraper prefers it to Prometheus text (by q), else TEXT."""
    om = text = other = 0.0
    for part in (accept or "").split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        if media == "application/openmetrics-text":
            om = max(om, q)
        elif media == "text/plain":
            text = max(text, q)
        elif media in ("*/*", "text/*"):
            other = max(other, q)
    return OPENMETRICS if om > 0 and om > max(text, other) else TEXT


def parse(body: str, content_type: str) -> list[Metric]:
    """The families of one body, by its Content-Type (OpenMetrics, else Prometheus text)."""
    try:
        if content_type.lower().startswith("application/openmetrics-text"):
            return list(parse_openmetrics(body))
        return list(parse_text(body))
    except Exception as exc:  # the parsers raise ValueError, KeyError, IndexError...
        raise ExpositionError(f"{type(exc).__name__}: {exc}") from None


def labelled(families: Iterable[Metric], application: str) -> Iterator[Metric]:
    """The families with every sample labelled by its application (families without any: left out)."""
    for family in families:
        if not family.samples:
            continue
        family.samples = [
            s
            if APPLICATION_LABEL in s.labels
            else s._replace(labels={**s.labels, APPLICATION_LABEL: application})
            for s in family.samples
        ]
        yield family


class _Families:
    """What prometheus_client's writers take: something with `collect()`."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


_OM_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "summary": "summary"}


def envoy_as_openmetrics(text: str) -> str:
    """Envoy's Prometheus text as OpenMetrics, its series names unchanged (dashboards written for
    Envoy's names keep working whatever the scraper negotiates): a counter `x_total` is declared as
    family `x`; a counter without the `_total` OpenMetrics requires (or whose family name another
    family has) is declared `unknown` rather than renamed; `untyped` is `unknown`. Line by line:
    no parsing into objects."""
    lines = text.splitlines()
    declared = {line.split()[2] for line in lines if line.startswith("# TYPE ") and len(line.split()) > 2}
    out: list[str] = []
    for line in lines:
        if not line.strip() or (line.startswith("#") and not line.startswith("# TYPE ")):
            continue  # HELP lines would name the family as declared below; Envoy writes none
        if line.startswith("# TYPE "):
            _, _, name, kind = (line.split() + ["untyped"])[:4]
            if kind == "counter":
                # `x_total` is family `x`, unless Envoy has a family `x` too (upstream_rq_total
                # beside upstream_rq{envoy_response_code}): then it stays `unknown`, as named.
                family = name.removesuffix("_total")
                name, kind = (
                    (family, kind) if name != family and family not in declared else (name, "unknown")
                )
            line = f"# TYPE {name} {_OM_TYPES.get(kind, 'unknown')}"
        out.append(line)
    return "\n".join(out) + "\n" if out else ""


def merged(envoy_text: str, applications: list[tuple[str, list[Metric]]], fmt: str) -> bytes:
    """One body in `fmt`: Envoy's series then each application's (labelled)."""
    apps = [f for name, families in applications for f in labelled(families, name)]
    if fmt == OPENMETRICS:
        tail = om_exposition.generate_latest(_Families(apps))  # type: ignore[arg-type]  # ends "# EOF"
        return envoy_as_openmetrics(envoy_text).encode() + tail
    tail = text_exposition.generate_latest(_Families(apps)) if apps else b""  # type: ignore[arg-type]
    head = envoy_text.encode()
    if head and not head.endswith(b"\n"):
        head += b"\n"
    return head + tail
