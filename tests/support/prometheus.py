"""A real Prometheus (Debian's /usr/bin/prometheus) for tests: on loopback, a free port, a temp
TSDB, one scrape config given by the test; stopped with the lab."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import yaml

from labkit.lab import Lab, Proc
from labkit.ports import free_port
from labkit.waiting import wait_until

PROMETHEUS = "/usr/bin/prometheus"


def require_prometheus() -> str:
    import pytest  # noqa: PLC0415

    path = shutil.which("prometheus") or (PROMETHEUS if Path(PROMETHEUS).exists() else None)
    if path is None:
        pytest.fail("prometheus is missing: bash scripts/setup.sh installs it (as root)")
    return path


class Prometheus:
    def __init__(self, lab: Lab, scrape_config: dict[str, Any]) -> None:
        binary = require_prometheus()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root = lab.root / "prometheus"
        root.mkdir()
        config = root / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [scrape_config],
                }
            )
        )
        self.proc: Proc = lab.spawn(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
        )
        wait_until(self._ready, timeout=30, interval=0.2)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def active_targets(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=5)
        return response.json()["data"]["activeTargets"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        return response.json()["data"]["result"]
