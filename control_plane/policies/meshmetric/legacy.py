"""Kuma's older `Mesh.metrics` (`enabledBackend` naming a `prometheus` backend) as a MeshMetric
conf, for the meshes that still use it. A MeshMetric selecting a proxy takes precedence (Kuma).

```yaml
metrics:
  enabledBackend: prometheus-1
  backends:
  - name: prometheus-1
    type: prometheus
    conf: {port: 5670, path: /metrics, aggregate: [{name: app, port: 8081, path: /metrics}],
           envoy: {usedOnly: false}}
```
Mapped: port, path, `aggregate` (entries not `enabled: false`) → applications, `envoy.usedOnly`
→ `includeUnused` (its negation; Kuma's default serves all stats), Envoy's series unfiltered
(profile All: the field predates profiles). Not mapped: `skipMTLS`, `tags`, `tls`,
`envoy.filterRegex` (ignored). A conf that does not parse is no endpoint (logged once).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from control_plane.policies.meshmetric.api import Conf

log = logging.getLogger(__name__)


def legacy_conf(metrics: dict[str, Any] | None) -> Conf | None:
    if not isinstance(metrics, dict) or not metrics.get("enabledBackend"):
        return None
    backend = next(
        (
            b
            for b in metrics.get("backends") or []
            if isinstance(b, dict) and b.get("name") == metrics["enabledBackend"]
        ),
        None,
    )
    if backend is None or str(backend.get("type", "prometheus")).lower() != "prometheus":
        return None
    return _parsed(json.dumps(backend.get("conf") or {}, sort_keys=True))


@lru_cache(maxsize=256)
def _parsed(text: str) -> Conf | None:
    conf = json.loads(text)
    envoy = conf.get("envoy") or {}
    applications = [
        {k: a[k] for k in ("name", "port", "path", "address") if a.get(k) not in (None, "")}
        for a in conf.get("aggregate") or []
        if isinstance(a, dict) and a.get("enabled", True) is not False
    ]
    prometheus = {k: conf[k] for k in ("port", "path") if conf.get(k) not in (None, "", 0)}
    try:
        return Conf.model_validate(
            {
                "sidecar": {
                    "profiles": {"appendProfiles": [{"name": "All"}]},
                    "includeUnused": not envoy.get("usedOnly", False),
                },
                "applications": applications,
                "backends": [{"type": "Prometheus", "prometheus": prometheus}],
            }
        )
    except ValidationError as exc:
        log.warning("Mesh metrics backend not used: %s", exc)
        return None
