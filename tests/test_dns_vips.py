"""Service names in the control plane: VIP allocation (pure rules, properties), the DNS records
document, the allocator against a real SQLite store (restart, two instances, grace period), and
the `dnsServer` configuration."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.config import ConfigError, load_config
from control_plane.dns.allocator import VipAllocator, read_vips, services_of, vips_key
from control_plane.dns.records import DnsRecords, service_hostnames
from control_plane.dns.vips import VipEntry, VipTable, allocate
from control_plane.store.base import dataplane_key, mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.store.sqlite import SqliteStore
from labkit.waiting import eventually
from tests.support.kumactl_api import ApiServer, config_file, kumactl, server  # noqa: F401

CIDR = ipaddress.ip_network("240.0.0.0/4")
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
GRACE = timedelta(minutes=10)


# --- allocation rules --------------------------------------------------------------------------


def test_each_service_gets_the_next_free_address_in_name_order() -> None:
    result = allocate(VipTable(), ["web", "backend", "db"], CIDR, T0, GRACE)
    assert result.table.ips() == {"backend": "240.0.0.1", "db": "240.0.0.2", "web": "240.0.0.3"}
    assert result.unallocated == [] and result.next_release is None


def test_a_service_keeps_its_address_through_the_grace_period_and_loses_it_after() -> None:
    first = allocate(VipTable(), ["web", "backend"], CIDR, T0, GRACE).table
    gone = allocate(first, ["web"], CIDR, T0, GRACE)
    assert gone.table.entries["backend"] == VipEntry("240.0.0.1", T0 + GRACE)
    assert gone.next_release == T0 + GRACE
    # Back within the grace period: same address, no release pending.
    back = allocate(gone.table, ["web", "backend"], CIDR, T0 + GRACE / 2, GRACE)
    assert back.table.entries["backend"] == VipEntry("240.0.0.1") and back.next_release is None
    # Gone for longer than the grace period: released.
    released = allocate(gone.table, ["web"], CIDR, T0 + GRACE, GRACE)
    assert "backend" not in released.table.entries


def test_a_released_address_is_not_handed_out_again_at_once() -> None:
    table = allocate(VipTable(), ["a", "b"], CIDR, T0, timedelta(0)).table
    table = allocate(table, ["b"], CIDR, T0, timedelta(0)).table  # a's 240.0.0.1 released
    assert allocate(table, ["b", "c"], CIDR, T0, timedelta(0)).table.ips()["c"] == "240.0.0.3"


def test_the_search_wraps_around_and_a_full_range_leaves_services_out() -> None:
    small = ipaddress.ip_network("240.0.0.0/30")  # two host addresses
    table = allocate(VipTable(), ["a", "b"], small, T0, timedelta(0)).table
    table = allocate(table, ["b"], small, T0, timedelta(0)).table
    result = allocate(table, ["b", "c", "d"], small, T0, timedelta(0))
    assert result.table.ips() == {"b": "240.0.0.2", "c": "240.0.0.1"}
    assert result.unallocated == ["d"]


def test_addresses_outside_a_changed_range_are_replaced() -> None:
    table = allocate(VipTable(), ["web"], CIDR, T0, GRACE).table
    other = ipaddress.ip_network("10.99.0.0/16")
    assert allocate(table, ["web"], other, T0, GRACE).table.ips() == {"web": "10.99.0.1"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sets(st.sampled_from("abcdefghij")), min_size=1, max_size=12))
def test_addresses_stay_unique_and_stable_over_any_history(rounds: list[set[str]]) -> None:
    table, now = VipTable(), T0
    for present in rounds:
        before = table
        table = allocate(table, present, CIDR, now, GRACE).table
        ips = list(table.ips().values())
        assert len(ips) == len(set(ips)), "two services share an address"
        assert present <= table.entries.keys()
        for service in before.entries.keys() & table.entries.keys():
            assert before.entries[service].ip == table.entries[service].ip, "an address moved"
        assert VipTable.from_spec(json.loads(json.dumps(table.to_spec()))) == table
        now += timedelta(minutes=3)


# --- names and records -------------------------------------------------------------------------


def test_names_are_the_service_and_kumas_dotted_variant() -> None:
    assert service_hostnames("backend", "mesh") == ["backend.mesh"]
    assert service_hostnames("Backend_kuma-demo_svc_8080", "mesh") == [
        "backend_kuma-demo_svc_8080.mesh",
        "backend.kuma-demo.svc.8080.mesh",
    ]
    assert service_hostnames("bad name/x", "mesh") == []


def test_records_document_and_etag() -> None:
    records = DnsRecords.of({"web": "240.0.0.2", "a_b": "240.0.0.1", "a.b": "240.0.0.3"}, "mesh")
    doc = json.loads(records.body)
    # `a.b.mesh` is service a.b's own name; a_b keeps `a_b.mesh` only.
    assert doc == {
        "domain": "mesh",
        "records": [
            {"name": "a.b.mesh", "ips": ["240.0.0.3"]},
            {"name": "a_b.mesh", "ips": ["240.0.0.1"]},
            {"name": "web.mesh", "ips": ["240.0.0.2"]},
        ],
    }
    assert (
        records.etag
        == DnsRecords.of({"web": "240.0.0.2", "a_b": "240.0.0.1", "a.b": "240.0.0.3"}, "mesh").etag
    )
    assert records.etag != DnsRecords.of({"web": "240.0.0.9"}, "mesh").etag


def test_services_are_read_from_stored_specs_defensively() -> None:
    specs = [
        {"networking": {"inbound": [{"tags": {"kuma.io/service": "web"}}, {"tags": {}}]}},
        {"networking": {"inbound": "nonsense"}},
        {},
    ]
    assert services_of(specs) == {"web"}


# --- the allocator on a real store --------------------------------------------------------------


def _dataplane(store: SqliteStore | MemoryStore, name: str, service: str, mesh: str = "default") -> None:
    inbound = [{"port": 8080, "tags": {"kuma.io/service": service}}]
    store.upsert(dataplane_key(name, mesh), {"networking": {"address": "10.0.0.1", "inbound": inbound}})


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_allocator_persists_survives_restart_and_shares_a_store(tmp_path: Path) -> None:
    db = tmp_path / "kuma.db"
    config = load_config(None, env={"KUMA_DNS_SERVER_VIP_RELEASE_GRACE_PERIOD": "1m"}).dns_server
    clock = Clock()
    store = SqliteStore(db)
    store.upsert(mesh_key("default"), {})
    _dataplane(store, "backend-1", "backend")
    _dataplane(store, "web-1", "web")
    VipAllocator(store, config, clock=clock).allocate()
    assert read_vips(store, "default").ips() == {"backend": "240.0.0.1", "web": "240.0.0.2"}
    version = store.get(vips_key("default")).version
    VipAllocator(store, config, clock=clock).allocate()  # nothing changed: nothing written
    assert store.get(vips_key("default")).version == version
    store.close()

    # A restarted control plane and a second one on the same store agree.
    first, second = SqliteStore(db), SqliteStore(db)
    _dataplane(first, "db-1", "db")
    VipAllocator(first, config, clock=clock).allocate()
    VipAllocator(second, config, clock=clock).allocate()
    assert read_vips(second, "default").ips() == {
        "backend": "240.0.0.1",
        "db": "240.0.0.3",
        "web": "240.0.0.2",
    }

    # The last instance goes: the name stays for the grace period, then the address is released.
    first.delete(dataplane_key("backend-1"))
    assert VipAllocator(first, config, clock=clock).allocate() == T0 + timedelta(minutes=1)
    assert "backend" in read_vips(first, "default").ips()
    clock.now = T0 + timedelta(minutes=1)
    VipAllocator(second, config, clock=clock).allocate()
    assert "backend" not in read_vips(first, "default").ips()
    first.close()
    second.close()


def test_deleting_a_mesh_removes_its_table(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kuma.db")
    store.upsert(mesh_key("other"), {})
    _dataplane(store, "a-1", "a", mesh="other")
    VipAllocator(store, load_config(None, env={}).dns_server).allocate()
    assert store.get(vips_key("other")) is not None
    store.delete(mesh_key("other"), cascade_mesh=True)
    assert store.get(vips_key("other")) is None
    store.close()


# --- configuration ------------------------------------------------------------------------------


def test_dns_server_settings_have_kumas_names_and_defaults() -> None:
    dns = load_config(None, env={}).dns_server
    assert (dns.domain, str(dns.cidr), dns.service_vip_enabled, dns.service_vip_port) == (
        "mesh",
        "240.0.0.0/4",
        True,
        80,
    )
    env = {
        "KUMA_DNS_SERVER_DOMAIN": "Internal",
        "KUMA_DNS_SERVER_CIDR": "241.0.0.0/16",
        "KUMA_DNS_SERVER_SERVICE_VIP_ENABLED": "false",
        "KUMA_DNS_SERVER_SERVICE_VIP_PORT": "8000",
        "KUMA_RUNTIME_UNIVERSAL_VIP_REFRESH_INTERVAL": "2s",
    }
    dns = load_config(None, env=env).dns_server
    assert (dns.domain, str(dns.cidr), dns.service_vip_enabled, dns.service_vip_port) == (
        "internal",
        "241.0.0.0/16",
        False,
        8000,
    )
    assert dns.vip_refresh_interval == 2.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KUMA_DNS_SERVER_CIDR": "fd00::/64"}, "not an IPv4 CIDR"),
        ({"KUMA_DNS_SERVER_CIDR": "nonsense"}, "is not a CIDR"),
        ({"KUMA_DNS_SERVER_CIDR": "240.0.0.0/31"}, "no room"),
        ({"KUMA_DNS_SERVER_DOMAIN": ".mesh"}, "must not start with a dot"),
        ({"KUMA_DNS_SERVER_SERVICE_VIP_PORT": "0"}, "port can't be 0"),
        ({"KUMA_RUNTIME_UNIVERSAL_VIP_REFRESH_INTERVAL": "0s"}, "positive duration"),
    ],
)
def test_bad_dns_server_settings_are_refused_by_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, env=env)
    assert message in str(error.value) and next(iter(env)) in str(error.value)


def test_dns_server_section_of_a_kuma_config_file(tmp_path: Path) -> None:
    path = tmp_path / "kuma-cp.yaml"
    path.write_text("dnsServer:\n  domain: mesh\n  CIDR: 242.0.0.0/8\n  serviceVipPort: 81\n")
    config = load_config(str(path), env={})
    assert str(config.dns_server.cidr) == "242.0.0.0/8" and config.dns_server.service_vip_port == 81
    assert config.ignored_keys == ()


# --- the API and kumactl inspect vips -----------------------------------------------------------

TWO_SERVICES = """\
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.2
  inbound:
  - {port: 8080, tags: {kuma.io/service: backend_kuma-demo_svc_8080}}
  - {port: 9090, tags: {kuma.io/service: backend_kuma-demo_svc_8080}}
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound:
  - {port: 80, tags: {kuma.io/service: web}}
"""


def test_inspect_vips_shows_addresses_names_ports_and_pending_release(
    config_file: Path,  # noqa: F811
    server: ApiServer,  # noqa: F811
) -> None:
    assert kumactl(config_file, "apply", "-f", "-", stdin=TWO_SERVICES).exit_code == 0
    config = load_config(None, env={}).dns_server
    VipAllocator(server.store, config).allocate()
    body = json.loads(kumactl(config_file, "inspect", "vips", "-o", "json").output)
    assert body == {
        "mesh": "default",
        "domain": "mesh",
        "serviceVipEnabled": True,
        "serviceVipPort": 80,
        "items": [
            {
                "service": "backend_kuma-demo_svc_8080",
                "ip": "240.0.0.1",
                "names": ["backend_kuma-demo_svc_8080.mesh", "backend.kuma-demo.svc.8080.mesh"],
                "ports": [80, 8080, 9090],
            },
            {"service": "web", "ip": "240.0.0.2", "names": ["web.mesh"], "ports": [80]},
        ],
    }
    assert kumactl(config_file, "delete", "dataplane", "web-1").exit_code == 0
    VipAllocator(server.store, config).allocate()
    table = kumactl(config_file, "inspect", "vips").output.splitlines()
    assert table[0].split() == ["SERVICE", "VIP", "NAMES", "PORTS", "RELEASE", "AFTER"]
    assert table[1].split() == [
        "backend_kuma-demo_svc_8080",
        "240.0.0.1",
        "backend_kuma-demo_svc_8080.mesh,backend.kuma-demo.svc.8080.mesh",
        "80,8080,9090",
        "-",
    ]
    web = table[2].split()
    assert web[:4] == ["web", "240.0.0.2", "web.mesh", "-"] and web[4].endswith("Z")

    missing = kumactl(config_file, "inspect", "vips", "--mesh", "nope")
    assert missing.exit_code != 0 and 'mesh "nope" not found' in missing.output
    assert "Traceback" not in missing.output


async def test_a_burst_of_dataplanes_costs_a_pass_per_refresh_interval_not_one_each() -> None:
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    config = load_config(None, env={"KUMA_RUNTIME_UNIVERSAL_VIP_REFRESH_INTERVAL": "300ms"}).dns_server
    passes: list[set[str] | None] = []

    class Counting(VipAllocator):
        def allocate(self, meshes: set[str] | None = None) -> datetime | None:
            passes.append(meshes)
            return super().allocate(meshes)

    task = asyncio.create_task(Counting(store, config).run())
    try:
        await asyncio.sleep(0.1)  # the start-up pass
        started = time.monotonic()
        for i in range(100):  # a fleet connecting over ~0.5 s
            _dataplane(store, f"svc-{i}-1", f"svc-{i}")
            await asyncio.sleep(0.005)
        await eventually(lambda: len(read_vips(store, "default").entries) == 100, timeout=2)
        took = time.monotonic() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert passes[0] is None and all(p == {"default"} for p in passes[1:])
    assert len(passes) - 1 <= took / 0.3 + 2, f"{len(passes) - 1} passes in {took:.2f} s"
