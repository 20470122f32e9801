"""Check generated xDS resources with the real Envoy: `envoy --mode validate` on a static bootstrap."""

from __future__ import annotations

import subprocess
from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from control_plane.xds.generate.snapshot import Resources
from control_plane.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE


def static_bootstrap(resources: Resources) -> bootstrap_pb2.Bootstrap:
    """The resources as static config (no ADS here): EDS clusters get their assignment inline."""
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.id, bootstrap.node.cluster = "default.validate", "validate"
    bootstrap.static_resources.listeners.extend(resources[LISTENER_TYPE].values())
    for name, cluster in resources[CLUSTER_TYPE].items():
        static = cluster_pb2.Cluster()
        static.CopyFrom(cluster)
        if static.type == cluster_pb2.Cluster.EDS:
            static.ClearField("eds_cluster_config")
            static.type = cluster_pb2.Cluster.STATIC
            static.load_assignment.CopyFrom(resources[ENDPOINT_TYPE][name])
        bootstrap.static_resources.clusters.append(static)
    return bootstrap


def assert_envoy_accepts(envoy_binary: Path, resources: Resources, config: Path) -> None:
    """Write `resources` as a bootstrap to `config` and fail with Envoy's words unless it validates."""
    config.write_text(json_format.MessageToJson(static_bootstrap(resources)))
    result = subprocess.run(
        [str(envoy_binary), "--mode", "validate", "--config-path", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{config.name}: {result.stdout}{result.stderr}"
    assert "OK" in result.stdout + result.stderr
