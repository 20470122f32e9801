"""MeshMetric → the proxy's metrics endpoint (Kuma order 1500), applied to the whole proxy.

With at least one Prometheus backend in the merged conf: per backend, a listener on the
Dataplane's address and the backend's port whose path goes to the agent's metrics hijacker; the
hijacker's cluster; and the listener the agent reads what to merge from (applications, profiles,
includeUnused: `agent_config`). Without backends nothing is added (Kuma). A proxy that did not say
where its agent works (no `workdir` metadata: not run by kuma-dp) gets nothing, with a warning once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from typing import Any

from control_plane.policies.core.parts import ProxyResources
from control_plane.policies.core.rules import MergedConf
from control_plane.policies.meshmetric.api import DEFAULT_CLIENT_ID, Conf
from control_plane.policies.meshmetric.envoy_config import (
    config_listener,
    hijacker_cluster,
    prometheus_listener,
    socket_path,
)
from control_plane.policies.meshmetric.legacy import legacy_conf
from control_plane.xds.names import CLUSTER_TYPE, LISTENER_TYPE
from kuma_common.dp_contract import METRICS_CONFIG_SOCKET, METRICS_HIJACKER_SOCKET

log = logging.getLogger(__name__)


def agent_config(conf: Conf) -> dict[str, Any]:
    """What the agent merges (Kuma's dpapi shape; kuma_common/dp_contract.py)."""
    applications = [
        {k: v for k, v in app.model_dump(exclude_none=True).items()} for app in conf.applications or []
    ]
    metrics: dict[str, Any] = {"applications": applications}
    if conf.sidecar is not None:
        metrics["sidecar"] = conf.sidecar.model_dump(exclude_none=True)
    return {"observability": {"metrics": metrics}}


@lru_cache(maxsize=1024)
def _encoded(text: str) -> tuple[bytes, str]:
    body = text.encode()
    return body, '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


def apply_proxy(merged: MergedConf, resources: ProxyResources) -> None:
    apply_conf(merged.parsed(Conf), resources)


def apply_mesh_metrics(metrics: dict[str, Any] | None, resources: ProxyResources) -> None:
    """Kuma's older `Mesh.metrics`, for a proxy no MeshMetric selects (legacy.py)."""
    conf = legacy_conf(metrics)
    if conf is not None:
        apply_conf(conf, resources)


def apply_conf(conf: Conf, resources: ProxyResources) -> None:
    backends = [b.prometheus_backend() for b in conf.backends or [] if b.type == "Prometheus"]
    proxy = resources.proxy
    if not backends or proxy is None:
        return
    workdir = proxy.workdir
    hijacker = socket_path(workdir, METRICS_HIJACKER_SOCKET) if workdir else None
    config = socket_path(workdir, METRICS_CONFIG_SOCKET) if workdir else None
    if hijacker is None or config is None:
        _warn_no_workdir(proxy.mesh, proxy.name, workdir)
        return
    address = proxy.address
    for backend in backends:
        listener = prometheus_listener(
            backend.clientId or DEFAULT_CLIENT_ID, address, backend.port, backend.path
        )
        resources.put(LISTENER_TYPE, listener.name, listener)
    cluster = hijacker_cluster(hijacker)
    resources.put(CLUSTER_TYPE, cluster.name, cluster)
    body, etag = _encoded(json.dumps(agent_config(conf), sort_keys=True, separators=(",", ":")))
    listener = config_listener(config, body, etag)
    resources.put(LISTENER_TYPE, listener.name, listener)


@lru_cache(maxsize=1024)
def _warn_no_workdir(mesh: str, name: str, workdir: str | None) -> None:
    reason = (
        "sent no work dir (not run by kuma-dp?)" if not workdir else f"has a work dir too long ({workdir})"
    )
    log.warning(
        "MeshMetric selects %s/%s, but its proxy %s for the metrics sockets: no metrics endpoint",
        mesh,
        name,
        reason,
    )
