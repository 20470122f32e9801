"""How `kumactl get` prints: a table (default), or the universal documents as YAML or JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from control_plane.resources.registry import ResourceType

FORMATS = ("table", "yaml", "json")
Column = tuple[str, Callable[[dict[str, Any]], str]]


def render_document(document: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(document, indent=2)
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False).rstrip("\n")


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """Kubernetes-style age: 45s, 12m, 3h, 5d."""
    if not timestamp:
        return "-"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _mtls(doc: dict[str, Any]) -> str:
    mtls = doc.get("mtls") or {}
    backend = mtls.get("enabledBackend")
    if not backend:
        return "off"
    kind = next((b.get("type", "builtin") for b in mtls.get("backends", []) if b.get("name") == backend), "?")
    return f"{kind}/{backend}"


def _tags(doc: dict[str, Any]) -> str:
    inbounds = (doc.get("networking") or {}).get("inbound") or []
    tags: dict[str, str] = {}
    for inbound in inbounds:
        tags.update(inbound.get("tags") or {})
    return " ".join(f"{k}={v}" for k, v in sorted(tags.items()))


# Columns beyond NAME/MESH/AGE for the types that have something worth a glance.
_EXTRA_COLUMNS: dict[str, list[Column]] = {
    "Mesh": [("MTLS", _mtls)],
    "Dataplane": [
        ("ADDRESS", lambda d: str((d.get("networking") or {}).get("address", ""))),
        ("TAGS", _tags),
    ],
}


def columns_for(rtype: ResourceType) -> list[Column]:
    columns: list[Column] = []
    if rtype.mesh_scoped:
        columns.append(("MESH", lambda d: str(d.get("mesh", ""))))
    columns.append(("NAME", lambda d: str(d.get("name", ""))))
    columns.extend(_EXTRA_COLUMNS.get(rtype.name, []))
    columns.append(("AGE", lambda d: age(d.get("creationTime"))))
    return columns


def render_table(rtype: ResourceType, documents: list[dict[str, Any]]) -> str:
    columns = columns_for(rtype)
    rows = [[header for header, _ in columns]]
    rows.extend([cell(doc) for _, cell in columns] for doc in documents)
    return render_rows(rows)


def render_rows(rows: Sequence[Sequence[str]]) -> str:
    """Rows (the first one the headers) as aligned columns, as kumactl prints tables."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "   ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)
