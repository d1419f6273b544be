"""The host's maintenance ops (actors/maintenance.py): ERASE and COMPACT, on the toy counter over the
memory store: what they leave in the store, their ordering in the mailbox, who may send them."""
from __future__ import annotations

import asyncio

import pytest

from actors.entity import SYSTEM, Command, Env, Principal
from actors.host import EntityHost
from actors.maintenance import COMPACT, ERASE
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import Reply
from storage.memory import MemoryStore
from tests.toy import Counter

ALICE, ZED = Principal("alice"), Principal("zed-forget-me")


def add(n, eid="c1", by=ALICE, op_id=None, tell=()):
    return Command("counter", eid, "add", {"n": n, "tell": list(tell)}, by, op_id=op_id)


def sys(op, eid="c1", **args):
    return Command("counter", eid, op, args, SYSTEM)


@pytest.fixture
async def host():
    store = MemoryStore()
    h = EntityHost("h0", store, {"counter": Counter}, Env(), idle_timeout_s=3600)
    await h.start()
    yield h
    await h.close(passivate=False)


def stored(store: MemoryStore) -> bytes:
    return b"|".join([k.encode() for k in store.keys()]
                     + [r.data for log in store._records.values() for r in log]
                     + [s.data for s in store._snapshots.values()])


async def test_erase_removes_the_entity_and_what_follows_finds_it_empty(host):
    for i in range(1, 4):
        await host.call(add(i, op_id=f"op{i}"))
    assert host.store.keys() == {"counter:c1"}
    # queued behind the erase in one go: the add after it runs on the erased (empty) entity
    erase = asyncio.ensure_future(host.call(sys(ERASE)))
    after = asyncio.ensure_future(host.call(add(10, op_id="op1")))   # same op id: not a cached retry any more
    (reply, _), (total, version) = await asyncio.gather(erase, after)
    assert reply == {"erased": True}
    assert total == {"total": 10} and version == 1
    assert host.metrics.erased == 1
    assert (await host.call(sys(ERASE)))[0] == {"erased": True}      # the add wrote it again
    assert host.store.keys() == set()
    assert (await host.call(sys(ERASE)))[0] == {"erased": False}     # nothing stored: idempotent
    assert host.store.keys() == set()


async def test_erase_waits_for_the_outbox(host):
    """An entity whose effects are still on their way is not erased (they would be lost: a device
    group's listening events, say): refused retryably, erased once they are acknowledged."""
    sent = []

    def dispatch(cmd):
        fut = asyncio.get_running_loop().create_future()
        sent.append(fut)
        return fut
    host._dispatch = dispatch
    await host.call(add(1, tell=["c2"]))
    assert len(sent) == 1 and host.slots["counter:c1"].outbox
    with pytest.raises(SyncopateError) as err:
        await host.call(sys(ERASE))
    assert err.value.code is ErrorCode.OVERLOADED and err.value.retryable
    assert host.store.keys() == {"counter:c1"}                   # nothing erased
    # the acknowledgement's callback is scheduled before the erase command's mailbox drain
    sent[0].set_result(Reply(1, {"total": 1}))
    assert (await host.call(sys(ERASE)))[0] == {"erased": True}
    assert host.store.keys() == set()


async def test_compact_forgets_the_user_in_the_op_cache_and_drops_the_log(host):
    await host.call(add(1, by=ZED, op_id="z1"))
    await host.call(add(2, by=ALICE, op_id="a1"))
    await host.call(add(3, by=ALICE, op_id="session:zed-forget-me@4:s:x"))   # an op id naming the user
    assert b"zed-forget-me" in stored(host.store)
    reply, _ = await host.call(sys(COMPACT, forget="zed-forget-me"))
    assert reply == {"compacted": True, "seq": 3}
    assert host.store.record_count("counter:c1") == 0
    assert b"zed-forget-me" not in stored(host.store)
    # alice's op is still remembered (her retry is answered, not applied again); zed's is not
    assert (await host.call(add(2, by=ALICE, op_id="a1")))[0] == {"total": 3}
    assert (await host.call(add(1, by=ZED, op_id="z1")))[0] == {"total": 7}   # applied again
    # a restarted host loads the same
    h2 = EntityHost("h0", host.store, {"counter": Counter}, Env())
    await h2.start()
    assert (await h2.call(Command("counter", "c1", "get", {}, ALICE)))[0]["history"] == [1, 2, 3, 1]
    await h2.close(passivate=False)


async def test_compact_writes_a_newer_snapshot_when_one_is_already_at_the_committed_seq(host):
    """A snapshot written at passivation (before the user was forgotten) is at the committed seq;
    the forgetting one must still replace it (same-seq snapshots are ignored by the store)."""
    await host.call(add(1, by=ZED, op_id="z1"))
    slot = host.slots["counter:c1"]
    assert await host._snapshot(slot)
    assert b"zed-forget-me" in stored(host.store)                  # the op cache row is in that snapshot
    reply, _ = await host.call(sys(COMPACT, forget="zed-forget-me"))
    assert reply == {"compacted": True, "seq": 2}
    assert b"zed-forget-me" not in stored(host.store)
    assert (await host.call(add(5)))[1] == 3                      # versions go on from the empty entry


async def test_maintenance_is_system_only_and_checks_its_arguments(host):
    await host.call(add(1))
    for cmd in (Command("counter", "c1", ERASE, {}, ALICE), Command("counter", "c1", COMPACT, {"forget": "x"}, ALICE)):
        with pytest.raises(SyncopateError) as err:
            await host.call(cmd)
        assert err.value.code is ErrorCode.FORBIDDEN
    with pytest.raises(SyncopateError) as err:
        await host.call(sys(COMPACT))
    assert err.value.code is ErrorCode.INVALID_FIELD
    assert (await host.call(Command("counter", "c1", "get", {}, ALICE)))[0]["total"] == 1
    assert host.store.record_count("counter:c1") == 1


async def test_compact_of_nothing_stored_writes_nothing(host):
    reply, _ = await host.call(sys(COMPACT, "ghost", forget="zed"))
    assert reply == {"compacted": False, "seq": 0}
    assert host.store.keys() == set()
