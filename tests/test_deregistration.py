"""Deregistration across control-plane instances (control_plane/xds/deregistration.py) and the
leader election that runs it (control_plane/leader.py), over a store two instances share.

The store here is a MemoryStore marked shared: the same objects two instances on one PostgreSQL
database see (tests/test_store_postgres.py and tests/test_cp_instances.py run the real thing)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from control_plane.instances import Instances, instance_key
from control_plane.leader import LeaderElection
from control_plane.store.base import ConflictError, LeaderLock, dataplane_key, mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.xds.binding import registration_key
from control_plane.xds.deregistration import DeregistrationSweeper, connection_spec, deadline
from control_plane.xds.lifecycle import DataplaneLifecycle
from control_plane.xds.server import StreamRejected
from labkit.waiting import eventually
from tests.support.xds_control_plane import WEB, node

DELAY_S, GRACE_S = 10.0, 60.0


class SharedMemoryStore(MemoryStore):
    shared = True


def test_deadline_rules() -> None:
    alive = {"a"}
    assert deadline(connection_spec("a", True, 100.0), alive, 500.0, DELAY_S, GRACE_S) is None
    assert deadline(connection_spec("a", False, 100.0), alive, 500.0, DELAY_S, GRACE_S) == 110.0
    # Disconnected from a dead instance: still the delay from the disconnection.
    assert deadline(connection_spec("b", False, 100.0), alive, 500.0, DELAY_S, GRACE_S) == 110.0
    # Connected to a dead instance, or a record of an older release: the grace from when seen so.
    assert deadline(connection_spec("b", True, 100.0), alive, 500.0, DELAY_S, GRACE_S) == 560.0
    assert deadline({}, alive, 500.0, DELAY_S, GRACE_S) == 560.0


@pytest.fixture
def store() -> SharedMemoryStore:
    shared = SharedMemoryStore()
    shared.upsert(mesh_key("default"), {})
    return shared


def beat(store: SharedMemoryStore, instance: str, at: float) -> None:
    store.upsert(instance_key(instance), {"hostname": "h", "heartbeat": at})


async def test_a_proxy_moving_to_another_instance_keeps_its_dataplane(store: SharedMemoryStore) -> None:
    a, b = DataplaneLifecycle(store, "a"), DataplaneLifecycle(store, "b")
    now = time.time()
    beat(store, "a", now)
    beat(store, "b", now)
    sweeper = DeregistrationSweeper(store, Instances(store, "b"), DELAY_S, GRACE_S)
    proxy = node("default.web-1", WEB)
    await a.on_open(proxy)
    first = store.get(dataplane_key("web-1"))
    assert first is not None
    assert store.get(registration_key("default", "web-1")).spec["instance"] == "a"  # type: ignore[union-attr]
    # The proxy reconnects to b before a notices its stream is gone: a must not mark it disconnected.
    await b.on_open(proxy)
    await a.on_close(proxy.id)
    record = store.get(registration_key("default", "web-1"))
    assert record is not None and record.spec["connected"] is True and record.spec["instance"] == "b"
    assert sweeper.sweep(now + 1000) == 0
    assert store.get(dataplane_key("web-1")).version == first.version  # type: ignore[union-attr]
    # It leaves b for good: removed once the delay has passed, not before.
    await b.on_close(proxy.id)
    assert sweeper.sweep(time.time() + DELAY_S - 1) == 0
    assert sweeper.sweep(time.time() + DELAY_S + 1) == 1
    assert store.get(dataplane_key("web-1")) is None
    assert store.get(registration_key("default", "web-1")) is None  # owned: gone with it


async def test_proxies_of_a_dead_instance_get_the_grace_then_go(store: SharedMemoryStore) -> None:
    a = DataplaneLifecycle(store, "a")
    now = time.time()
    beat(store, "a", now - 100)  # a stopped beating long ago (killed: it never saw the stream close)
    beat(store, "b", now)
    await a.on_open(node("default.web-1", WEB))
    sweeper = DeregistrationSweeper(store, Instances(store, "b"), DELAY_S, GRACE_S)
    assert sweeper.sweep(now) == 0  # first seen orphaned now: the grace starts now
    assert sweeper.sweep(now + GRACE_S - 1) == 0
    assert sweeper.sweep(now + GRACE_S + 1) == 1


async def test_a_reconnect_racing_the_delete_wins(store: SharedMemoryStore) -> None:
    a = DataplaneLifecycle(store, "a")
    proxy = node("default.web-1", WEB)
    await a.on_open(proxy)
    await a.on_close(proxy.id)
    sweeper = DeregistrationSweeper(store, Instances(store, "a"), DELAY_S, GRACE_S)
    decided_on = store.get(registration_key("default", "web-1"))  # "disconnected": due
    assert decided_on is not None and decided_on.spec["connected"] is False
    version = store.get(dataplane_key("web-1")).version  # type: ignore[union-attr]
    await a.on_open(proxy)  # back, after the sweeper read the record
    with pytest.raises(ConflictError):  # the sweeper's delete is guarded by that record's version
        store.delete(dataplane_key("web-1"), guards=[(decided_on.key, decided_on.version)])
    assert store.get(dataplane_key("web-1")) is not None
    assert store.get(dataplane_key("web-1")).version == version  # type: ignore[union-attr]  # unchanged: not rewritten
    assert sweeper.sweep(time.time() + DELAY_S + 1) == 0  # connected again: nothing due


async def test_a_dataplane_of_a_missing_mesh_is_refused(
    store: SharedMemoryStore,
) -> None:
    proxy = node("other.web-1", {**WEB, "mesh": "other"})  # no Mesh "other"
    with pytest.raises(StreamRejected) as caught:
        await DataplaneLifecycle(store, "a").on_open(proxy)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert store.list("DataplaneRegistration")[1] == 0


class ToggledLock(LeaderLock):
    """The lock's answers set by the test (the real one is PostgreSQL's: tests/test_store_postgres.py)."""

    def __init__(self, free: bool) -> None:
        self.free = free
        self.held = False

    def try_acquire(self) -> bool:
        self.held = self.free
        return self.held

    def still_held(self) -> bool:
        return self.held and self.free


async def test_leader_jobs_run_only_while_the_lock_is_held() -> None:
    lock = ToggledLock(free=False)
    runs: list[str] = []
    changes: list[bool] = []

    async def job() -> None:
        runs.append("start")
        try:
            await asyncio.Event().wait()
        finally:
            runs.append("stop")

    election = LeaderElection(lock, [("job", job)], "me", poll_s=0.02, on_change=changes.append)
    task = asyncio.create_task(election.run())
    try:
        await asyncio.sleep(0.1)
        assert runs == [] and not election.is_leader  # someone else holds it
        lock.free = True
        await eventually(lambda: runs == ["start"])
        lock.free = False  # the database let our connection go
        await eventually(lambda: runs == ["start", "stop"])
        assert changes == [True, False]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_failing_leader_job_is_restarted_not_fatal() -> None:
    attempts: list[int] = []

    async def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("the store is away")
        await asyncio.Event().wait()

    election = LeaderElection(ToggledLock(free=True), [("flaky", flaky)], "me", poll_s=0.02, restart_s=0.01)
    task = asyncio.create_task(election.run())
    try:
        await eventually(lambda: len(attempts) == 3)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_instances_alive_by_heartbeat(store: SharedMemoryStore) -> None:
    now = time.time()
    beat(store, "old", now - 60)
    beat(store, "fresh", now - 1)
    assert Instances(store, "me").alive() == {"me", "fresh"}
    # A store nobody shares: only this instance, whatever records exist.
    assert Instances(MemoryStore(), "me").alive() == {"me"}
