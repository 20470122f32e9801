"""Which proxies Prometheus scrapes, where, and with what labels: pure functions of the store's
Dataplanes and MeshMetric policies.

A Dataplane that a MeshMetric with a Prometheus backend selects is one target per backend:
`<its address>:<port>`, path `path`, labels `mesh`, `dataplane`, `service` (Kuma's: the smallest of its
services), `zone` when the Dataplane has the `kuma.io/zone` label, and `kuma_io_client_id` for a
backend's `clientId`, as Kuma's MADS does. Where no MeshMetric selects a proxy, its Mesh's older
`metrics` field may (policies/meshmetric/legacy.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from control_plane.policies.core.parts import ProxyInfo
from control_plane.policies.core.rules import MeshPolicies
from control_plane.policies.meshmetric.api import DEFAULT_CLIENT_ID, Conf
from control_plane.policies.meshmetric.legacy import legacy_conf
from control_plane.policies.registry import BY_KIND
from control_plane.resources.dataplane import Dataplane

_METRIC = BY_KIND["MeshMetric"]


@dataclass(frozen=True)
class Assignment:
    mesh: str
    service: str
    dataplane: str
    address: str  # host:port
    path: str
    client_id: str
    labels: dict[str, str] = field(default_factory=dict)

    def http_sd(self) -> dict[str, Any]:
        """Prometheus HTTP SD's target group."""
        return {"targets": [self.address], "labels": {**self.labels, "__metrics_path__": self.path}}

    def mads(self) -> dict[str, Any]:
        """Kuma's MonitoringAssignment (observability/v1, JSON) as kuma_sd_configs reads it."""
        return {
            "@type": "type.googleapis.com/kuma.observability.v1.MonitoringAssignment",
            "mesh": self.mesh,
            "service": self.service,
            "targets": [
                {
                    "name": self.dataplane,
                    "scheme": "http",
                    "address": self.address,
                    "metrics_path": self.path,
                    "labels": {
                        k: v for k, v in self.labels.items() if k not in ("mesh", "service", "dataplane")
                    },
                }
            ],
        }


def assignments(
    dataplanes: list[Dataplane], policies: MeshPolicies, mesh_metrics: dict[str, Any] | None = None
) -> list[Assignment]:
    """The targets of one mesh's proxies (`mesh_metrics`: the Mesh's older `metrics` field)."""
    found: list[Assignment] = []
    legacy = legacy_conf(mesh_metrics)
    for dataplane in dataplanes:
        merged = policies.proxy_conf(_METRIC, dataplane)
        try:
            conf: Conf | None = merged.parsed(Conf) if merged is not None else legacy
        except ValueError:
            continue  # the generator warns about a merge that is not valid
        if conf is None:
            continue
        for backend in conf.backends or []:
            if backend.type != "Prometheus":
                continue
            prometheus = backend.prometheus_backend()
            found.append(_assignment(dataplane, prometheus.port, prometheus.path, prometheus.clientId))
    return found


def _assignment(dataplane: Dataplane, port: int, path: str, client_id: str | None) -> Assignment:
    proxy = ProxyInfo.of(dataplane, None)  # Kuma's address (advertised first), service and zone
    host = f"[{proxy.address}]" if ":" in proxy.address else proxy.address
    labels = {"mesh": proxy.mesh, "dataplane": proxy.name, "service": proxy.service}
    if proxy.zone:
        labels["zone"] = proxy.zone
    if client_id:
        labels["kuma_io_client_id"] = client_id
    return Assignment(
        mesh=proxy.mesh,
        service=proxy.service,
        dataplane=proxy.name,
        address=f"{host}:{port}",
        path=path,
        client_id=client_id or DEFAULT_CLIENT_ID,
        labels=labels,
    )
