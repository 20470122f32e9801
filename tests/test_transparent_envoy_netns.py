"""Transparent proxying for real: two network namespaces ("hosts") joined by a veth pair, in each an
app and a REAL Envoy (run as the proxy UID 5678) configured by our ADS server over a Unix socket,
and hand-written iptables REDIRECT rules (a minimal version of Kuma's). A plain `curl` to the
other host's IP goes through both Envoys without knowing it.

Needs root (namespaces, iptables); skipped otherwise, but fails when CI=true.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.transparent_envoy import (
    APP_PORT,
    PROXY_UID,
    TP,
    UNDECLARED_PORT,
    Host,
    counter,
    curl,
    listener_stat,
    mesh_of_two,
)

pytestmark = pytest.mark.timeout(90)


async def test_curl_to_the_other_hosts_ip_crosses_both_envoys(envoy_binary: Path) -> None:
    async with mesh_of_two(envoy_binary, {}) as (web, backend):
        await check_mesh_call(web, backend)
        await check_passthrough(web, backend)


def mtls(mode: str) -> dict[str, Any]:
    backend = {"name": "ca-1", "type": "builtin", "mode": mode}
    return {"mtls": {"enabledBackend": "ca-1", "backends": [backend]}}


async def test_strict_mtls_mesh_call_is_mutual_tls_and_nothing_goes_around_it(envoy_binary: Path) -> None:
    """The same plain curl crosses the hosts over mTLS (the app gets web's identity in
    x-forwarded-client-cert); a port no inbound declares is refused, and so is a plaintext
    connection that skips web's Envoy (sent as the proxy UID, so never redirected)."""
    async with mesh_of_two(envoy_binary, mtls("STRICT")) as (web, backend):
        result = await curl(web, f"http://{backend.address}:{APP_PORT}/")
        assert result.stdout.startswith(f"peer=127.0.0.6 port={APP_PORT}\n"), result
        assert "xfcc=" in result.stdout and "URI=spiffe://default/web" in result.stdout, result
        refused = await curl(web, f"http://{backend.address}:{UNDECLARED_PORT}/")
        assert refused.returncode != 0 and "peer=" not in refused.stdout, refused
        plaintext = await curl(web, f"http://{backend.address}:{APP_PORT}/", uid=PROXY_UID)
        assert plaintext.returncode != 0 and "peer=" not in plaintext.stdout, plaintext


async def check_mesh_call(web: Host, backend: Host) -> None:
    """A plain call to backend's IP: the `outbound:backend` chain of web's 15001 listener,
    backend's inbound listener, the app seeing 127.0.0.6 as its peer (Envoy's source for the app,
    which iptables lets through)."""
    # Envoy counts a redirected connection on the listener it is handed to (the original
    # destination's): backend's inbound listener. Web's has no listener of that address: 15001
    # keeps it and picks the service's chain by destination port and IP.
    listener = listener_stat(backend.address, APP_PORT, "downstream_cx_total")
    requests = "http.inbound_" + backend.address.replace(".", "_") + f"_{APP_PORT}.downstream_rq_total"
    stats = (
        (web, listener_stat("0.0.0.0", TP["redirectPortOutbound"], "downstream_cx_total")),
        (backend, listener),
        (web, "http.outbound_backend.downstream_rq_total"),
        (web, "cluster.backend.upstream_rq_total"),
        (backend, requests),
    )
    before = [await counter(host, name) for host, name in stats]
    result = await curl(web, f"http://{backend.address}:{APP_PORT}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"peer=127.0.0.6 port={APP_PORT}"
    after = [await counter(host, name) for host, name in stats]
    assert after == [count + 1 for count in before], list(
        zip([name for _, name in stats], before, after, strict=True)
    )


async def check_passthrough(web: Host, backend: Host) -> None:
    """A port no Dataplane declares (mesh without mTLS): passed through both Envoys to the
    original destination, still from 127.0.0.6 on backend's side."""
    out_cx = "cluster.outbound_passthrough_ipv4.upstream_cx_total"  # Envoy turns ":" into "_"
    in_cx = "cluster.inbound_passthrough_ipv4.upstream_cx_total"
    before = (await counter(web, out_cx), await counter(backend, in_cx))
    result = await curl(web, f"http://{backend.address}:{UNDECLARED_PORT}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"peer=127.0.0.6 port={UNDECLARED_PORT}"
    assert (await counter(web, out_cx), await counter(backend, in_cx)) == (before[0] + 1, before[1] + 1)


async def test_permissive_mtls_mesh_call_is_mutual_tls_and_other_traffic_still_passes(
    envoy_binary: Path,
) -> None:
    """PERMISSIVE: mesh peers still talk mTLS, but an undeclared port and a plaintext client that
    skips web's Envoy reach backend's app (through its Envoy, from 127.0.0.6)."""
    async with mesh_of_two(envoy_binary, mtls("PERMISSIVE")) as (web, backend):
        result = await curl(web, f"http://{backend.address}:{APP_PORT}/")
        assert "URI=spiffe://default/web" in result.stdout, result
        passed = await curl(web, f"http://{backend.address}:{UNDECLARED_PORT}/")
        assert passed.stdout.strip() == f"peer=127.0.0.6 port={UNDECLARED_PORT}", passed
        plaintext = await curl(web, f"http://{backend.address}:{APP_PORT}/", uid=PROXY_UID)
        assert plaintext.stdout.strip() == f"peer=127.0.0.6 port={APP_PORT}", plaintext
