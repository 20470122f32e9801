"""Benchmark: certificates signed per second by the control plane (CSR → certificate).

1. The signing function alone (`control_plane.ca.issue_certificate`: parse, verify and check the
   CSR, sign with the mesh CA) on one core, CSRs made beforehand.
2. End to end: a real `kuma-cp` (memory store, dpToken authn) and N concurrent HTTPS clients
   posting to `POST /certificate` on the DP server, each with its dataplane's token; once over
   N keep-alive TLS connections, once with a new TLS connection per certificate (proxies
   restarting at once). The CPU each side used per certificate is printed too: on a small
   machine the clients compete with the control plane for the same cores.

Target (issue 3): ≥ 500/s end to end, so 1,000 proxies restarting at once hold identities within 2 s.
Run alone: `.venv/bin/python -m bench.csr_signing [--profile quick]`; all sections: `bench/run`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.common import Measure, Profile, Target
from bench.report import run_alone
from control_plane.ca import issue_certificate
from control_plane.store.base import mesh_key
from control_plane.store.memory import MemoryStore
from labkit.lab import ControlPlaneProc, Lab, dataplane
from labkit.ports import free_port

SERVICE = "web"
URI = f"spiffe://default/{SERVICE}"


def make_csrs(count: int) -> list[str]:
    names = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(URI)])
    out = []
    for _ in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
        csr = builder.add_extension(names, critical=False).sign(key, hashes.SHA256())
        out.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return out


def signing_alone(csrs: list[str]) -> float:
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    issue_certificate(store, "default", [SERVICE], csrs[0])  # creates the CA outside the timing
    started = time.perf_counter()
    for csr in csrs:
        issue_certificate(store, "default", [SERVICE], csr)
    return len(csrs) / (time.perf_counter() - started)


TOKENS: dict[str, str] = {}


async def _client(host: str, port: int, context: ssl.SSLContext, bodies: list[tuple[str, bytes]]) -> int:
    """One keep-alive HTTPS connection sending its share of CSRs; returns how many failed.

    Plain HTTP/1.1 over asyncio streams: httpx costs more CPU per request than the control plane
    itself, and both share the machine's two cores.
    """
    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    failed = 0
    try:
        for name, body in bodies:
            head = (
                f"POST /certificate HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                f"authorization: {TOKENS[name]}\r\ncontent-length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            status, length = await _read_head(reader)
            await reader.readexactly(length)
            failed += status != 200
    finally:
        writer.close()
    return failed


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, int]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    length = next(
        (int(line.split(":", 1)[1]) for line in head if line.lower().startswith("content-length:")), 0
    )
    return status, length


async def end_to_end(
    port: int, ca: Path, csrs: list[str], clients: int, fresh: bool = False
) -> tuple[float, int]:
    """Certificates per second and failures; `fresh`: one new TLS connection per certificate
    (proxies restarting at once), else `clients` keep-alive connections."""
    names = list(TOKENS)
    bodies = [
        (
            names[i % len(names)],
            json.dumps({"mesh": "default", "name": names[i % len(names)], "csr": csr}).encode(),
        )
        for i, csr in enumerate(csrs)
    ]
    context = ssl.create_default_context(cafile=str(ca))
    started = time.perf_counter()
    if fresh:
        limit = asyncio.Semaphore(clients)

        async def one(body: tuple[str, bytes]) -> int:
            async with limit:
                return await _client("localhost", port, context, [body])

        failures = await asyncio.gather(*(one(body) for body in bodies))
    else:
        shares = (bodies[i::clients] for i in range(clients))
        failures = await asyncio.gather(*(_client("localhost", port, context, share) for share in shares))
    return len(csrs) / (time.perf_counter() - started), sum(failures)


def _prepare(lab: Lab, api_url: str, dataplanes: int) -> None:
    with httpx.Client(base_url=api_url, timeout=30) as api:
        for i in range(dataplanes):
            name = f"web-{i}"
            doc = dataplane(name, SERVICE, free_port(), free_port())
            api.put(f"/meshes/default/dataplanes/{name}", json=doc).raise_for_status()
            body = {"name": name, "mesh": "default", "tags": {"kuma.io/service": [SERVICE]}, "validFor": "1h"}
            response = api.post("/tokens/dataplane", json=body)
            response.raise_for_status()
            TOKENS[name] = response.text


def _measure(cp: ControlPlaneProc, csrs: list[str], clients: int, fresh: bool) -> tuple[float, float]:
    """Certificates per second end to end, and kuma-cp's CPU milliseconds per certificate."""
    cp_process = psutil.Process(cp.proc.popen.pid)
    cp_before = _cpu(cp_process)
    rate, failed = asyncio.run(end_to_end(cp.dp_port, cp.ca_cert, csrs, clients, fresh))
    if failed:
        raise RuntimeError(f"{failed} of {len(csrs)} certificate requests failed")
    return rate, (_cpu(cp_process) - cp_before) * 1000 / len(csrs)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


SECTION = "identity"
COUNTS = {"smoke": 100, "quick": 500, "full": 2000}
CLIENTS = 16
DATAPLANES = 50


def measure(profile: Profile) -> list[Measure]:
    csrs = make_csrs(COUNTS[profile.name])
    alone = [signing_alone(csrs) for _ in range(profile.repetitions)]
    rates: dict[bool, list[float]] = {False: [], True: []}
    cp_ms: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="bench-csr-") as tmp:
        lab = Lab(Path(tmp))
        try:
            work_dir = Path(tmp) / "kuma-cp"
            work_dir.mkdir()  # kuma-cp with the memory store does not create its work dir itself
            cp = lab.start_control_plane(
                work_dir=work_dir, KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE="dpToken", KUMA_STORE_TYPE="memory"
            )
            lab.wait_control_plane(cp)
            _prepare(lab, cp.api_url, DATAPLANES)
            for _ in range(profile.repetitions):
                for fresh in (False, True):
                    rate, ms = _measure(cp, csrs, CLIENTS, fresh)
                    rates[fresh].append(rate)
                    cp_ms[fresh].append(ms)
        finally:
            lab.close()
    alone_name = "signing alone, in process"
    return [
        Measure(SECTION, f"CSRs signed end to end, {CLIENTS} keep-alive HTTPS clients", "/s", rates[False],
                alone_name, alone, Target(500, at_most=False),
                note=f"kuma-cp CPU {statistics.median(cp_ms[False]):.2f} ms per certificate"),
        Measure(SECTION, "CSRs signed end to end, a new TLS connection each", "/s", rates[True],
                alone_name, alone, Target(500, at_most=False),
                note=f"kuma-cp CPU {statistics.median(cp_ms[True]):.2f} ms per certificate"),
    ]  # fmt: skip


if __name__ == "__main__":
    run_alone(measure, __doc__)
