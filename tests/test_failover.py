"""Node loss, rejoin and elastic hosts, in process: the real gateway dispatcher, cluster view,
hosts with leases, on PostgreSQL. A host killed under load is detected by the gateway, removed
from the view, and its entities are taken over by live hosts once its lease has run out: writes to
every entity succeed again within 5 s, and every acknowledged change is there at the end, once.
Adding a host, and the killed one coming back, move entities with no request failing."""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field

import pytest

# imported here, not inside the event loop (their imports read files: blockbuster refuses that)
import actors.channel  # noqa: F401
import actors.ray_host  # noqa: F401
import gateway.openapi
import storage.factory  # noqa: F401
import syncopate.events.bus  # noqa: F401
import syncopate.events.publish  # noqa: F401
import gateway.runner  # noqa: F401

gateway.openapi.document_bytes()        # built (from files) once, here, for every server started below
from actors.entity import Command, Principal
from actors.placement import owner_among
from protocols.errors import SyncopateError
from storage.postgres import PostgresStore
from syncopate.server import LocalServer, ServerSpec

PG_DSN = os.environ.get("SYNCOPATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
USER = Principal("alice")
LEASE = {"lease_s": 1.0, "renew_s": 0.2}
COUNTERS = 24


@dataclass
class Writer:
    """One counter, written one op at a time, each op retried with its op id until acknowledged
    (as a client would); `acks` are (sent, acknowledged) times."""
    eid: str
    phase: str
    acked: int = 0
    errors: list = field(default_factory=list)
    acks: list = field(default_factory=list)


async def write_loop(dispatcher, w: Writer, stop: asyncio.Event) -> None:
    while not stop.is_set():
        op_id = f"{w.eid}-{w.phase}-{w.acked + 1}"
        sent = time.monotonic()
        while True:
            try:
                await dispatcher.call(Command("counter", w.eid, "add", {"n": 1}, USER, op_id=op_id))
                break
            except SyncopateError as err:
                w.errors.append((time.monotonic(), err.code.value))
                await asyncio.sleep(0.05)
        w.acked += 1
        w.acks.append((sent, time.monotonic()))
        await asyncio.sleep(0.01)


@pytest.fixture
async def server(tmp_path):
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    store = PostgresStore(PG_DSN, prefix=prefix)
    spec = ServerSpec(data_dir=str(tmp_path), port=0, hosts=3, kinds="tests.toy:kinds", log_level="WARNING")
    srv = await LocalServer(spec, store=store, membership=f"m{prefix}", lease=LEASE).start()
    try:
        yield srv
    finally:
        await srv.stop()
        admin = PostgresStore(PG_DSN, prefix=prefix, max_size=2)
        await admin.start()
        await admin.drop()
        await admin.close()


async def run_writers(srv, during, seconds_after: float):
    phase = uuid.uuid4().hex[:6]
    writers = [Writer(f"c{i}", phase) for i in range(COUNTERS)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(write_loop(srv.gateway.dispatcher, w, stop)) for w in writers]
    await asyncio.sleep(0.5)                       # under load before anything happens
    t_event = time.monotonic()
    await during()
    await asyncio.sleep(seconds_after)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    return writers, t_event


async def totals(srv, writers) -> dict[str, int]:
    out = {}
    for w in writers:
        reply, _ = await srv.gateway.dispatcher.call(Command("counter", w.eid, "get", {}, USER))
        out[w.eid] = reply["total"]
    return out


async def test_node_loss_recovers_within_5_s_with_no_acknowledged_change_lost(server):
    srv = server
    cluster = srv.cluster
    victim = 0
    on_victim = [f"c{i}" for i in range(COUNTERS) if owner_among(f"counter:c{i}", (0, 1, 2)) == victim]
    assert on_victim

    async def kill():
        cluster.kill_host(victim)

    writers, t_kill = await run_writers(srv, kill, 4.0)
    assert srv.gateway.cluster.view.slots == (1, 2)
    # Every entity took writes again, and soon: the first acknowledgement after the kill.
    recovery = max(min(a for _, a in w.acks if a >= t_kill) - t_kill for w in writers)
    assert recovery < 5.0, recovery
    # The gateway retried what the dead host held (same op ids): no client saw a failure.
    assert [w.errors for w in writers] == [[]] * COUNTERS
    # Zero loss, nothing twice: each counter's total is exactly the ops acknowledged.
    assert await totals(srv, writers) == {w.eid: w.acked for w in writers}

    # Ray's restart of the host: it joins again and gets its entities back, handed off.
    async def revive():
        await cluster.revive(victim)

    writers2, _ = await run_writers(srv, revive, 2.0)
    assert srv.gateway.cluster.view.slots == (0, 1, 2)
    assert cluster.hosts[1].metrics.handoffs + cluster.hosts[2].metrics.handoffs == len(on_victim)
    assert [w.errors for w in writers2] == [[]] * COUNTERS
    assert await totals(srv, writers2) == {w.eid: w.acked + w2.acked for w, w2 in zip(writers, writers2)}


async def test_adding_and_removing_a_host_moves_entities_with_no_failed_request(server):
    srv = server
    cluster = srv.cluster
    moved = [f"c{i}" for i in range(COUNTERS) if owner_among(f"counter:c{i}", (0, 1, 2, 3)) == 3]
    assert moved

    async def add():
        assert await cluster.add_host() == 3

    writers, _ = await run_writers(srv, add, 1.5)
    assert srv.gateway.cluster.view.slots == (0, 1, 2, 3)
    assert [w.errors for w in writers] == [[]] * COUNTERS
    assert {s.entity_id for s in cluster.hosts[3].slots.values() if not s.phantom} == set(moved)
    assert await totals(srv, writers) == {w.eid: w.acked for w in writers}

    async def remove():
        await cluster.remove_host(1)

    writers2, _ = await run_writers(srv, remove, 1.5)
    assert srv.gateway.cluster.view.slots == (0, 2, 3)
    assert [w.errors for w in writers2] == [[]] * COUNTERS
    assert await totals(srv, writers2) == {w.eid: w.acked + w2.acked for w, w2 in zip(writers, writers2)}


async def test_a_host_ray_restarts_after_its_removal_rejoins_the_view_with_no_call(tmp_path, monkeypatch):
    """Issue #13: the node of slot 0 died, a gateway's failure detector removed the slot, and only
    then did Ray restart the host (its __init__, as on a restart). Nobody calls a slot that is not
    in the view (gateways ping and route to the view's slots, peers route by it), so the restarted
    process must start and join by itself: a host that started on its first call stayed out."""
    from actors.membership import Holder, join
    from actors.ray_host import HostActor
    from gateway.cluster_view import ClusterView
    from storage.factory import make_store
    import syncopate.logs
    # process tuning of a Ray worker, not what is tested: kept out of the test process
    monkeypatch.setattr(actors.ray_host, "restore_priority", lambda: None)
    monkeypatch.setattr(actors.ray_host, "freeze_startup", lambda: None)
    monkeypatch.setattr(syncopate.logs, "setup_logging", lambda *a: None)
    key = tmp_path / "channel.key"
    await asyncio.to_thread(key.write_text, "k" * 64)
    spec = {"data_dir": str(tmp_path), "channel_secret_file": str(key), "kinds": "tests.toy:kinds",
            "lease_s": 0.6, "renew_s": 0.1}
    store = make_store(str(tmp_path))            # the hosts' store (SQLite in the data dir)
    await store.start()
    dead = Holder("d", 0, "dead")
    await store.open_lease(str(dead), 30)
    await join(store, "d", dead)
    view = ClusterView(store, "d")
    await view.start()
    await view.remove(0, "dead")                 # the failure detector's verdict, before the restart
    assert view.view.members == {}
    restarted = HostActor.__ray_actor_class__("d", 0, 1, spec)
    try:
        deadline = time.monotonic() + 10.0
        # joined the view, and the start finished (the join is inside the start, before the actor
        # keeps its host: seen in between, restarted.host is still None)
        while 0 not in (await store.membership("d")).members or restarted.host is None:
            assert time.monotonic() < deadline, "the restarted host did not rejoin the view"
            await asyncio.sleep(0.02)            # polling the store: the join happens in the host
        assert Holder.parse((await store.membership("d")).members[0]).incarnation == restarted.host.incarnation
        assert (await view.refresh()).slots == (0,)
    finally:
        await restarted.shutdown()
        await view.close()
        await store.close()
