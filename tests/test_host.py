"""EntityHost: group commit, output gate, idempotency, fencing, passivation, crash recovery."""
import asyncio

import pytest

from actors.entity import Command, Env, Principal
from actors.host import EntityHost
from protocols.errors import ErrorCode, SyncopateError
from storage.memory import MemoryStore
from tests.toy import Counter

USER = Principal("alice")


def add(n, eid="c1", op_id=None):
    return Command("counter", eid, "add", {"n": n}, USER, op_id=op_id)


@pytest.fixture
async def host():
    store = MemoryStore()
    h = EntityHost("h0", store, {"counter": Counter}, Env(), idle_timeout_s=3600)
    await h.start()
    yield h
    await h.close(passivate=False)


async def test_commands_apply_in_order_and_survive_reactivation(host):
    replies = await asyncio.gather(*(host.call(add(i)) for i in range(1, 21)))
    assert [r[0]["total"] for r in replies] == [sum(range(1, i + 1)) for i in range(1, 21)]
    assert [r[1] for r in replies] == list(range(1, 21))
    # a fresh host on the same store (a restart) sees every acknowledged change
    h2 = EntityHost("h0", host.store, {"counter": Counter}, Env())
    await h2.start()
    reply, version = await h2.call(Command("counter", "c1", "get", {}, USER))
    assert reply["history"] == list(range(1, 21)) and version == 20
    await h2.close(passivate=False)


async def test_group_commit_shares_one_transaction(host):
    before = host.store.commits
    await asyncio.gather(*(host.call(add(1, eid=f"e{i}")) for i in range(50)))
    # 50 entities, 50 changes: far fewer commits than changes
    assert host.store.commits - before < 10


async def test_reply_waits_for_commit(host):
    store = host.store
    gate = asyncio.Event()
    real_append = store.append

    committing = asyncio.Event()

    async def slow_append(batch):
        committing.set()
        await gate.wait()
        return await real_append(batch)

    store.append = slow_append
    task = asyncio.create_task(host.call(add(5)))
    read = asyncio.create_task(host.call(Command("counter", "c1", "get", {}, USER)))
    await asyncio.wait_for(committing.wait(), 5)    # the write is in the store, not yet committed
    await asyncio.sleep(0)                          # one more turn: nothing may be released meanwhile
    assert not task.done() and not read.done()     # neither the write nor a read of it is released
    gate.set()
    assert (await task)[0] == {"total": 5}
    assert (await read)[0]["total"] == 5


async def test_failed_commit_acknowledges_nothing_and_reloads(host):
    await host.call(add(1))
    host.store.fail_next = SyncopateError(ErrorCode.STORE_UNAVAILABLE, "disk on fire")
    with pytest.raises(SyncopateError) as e:
        await host.call(add(2))
    assert e.value.code == ErrorCode.STORE_UNAVAILABLE
    reply, _ = await host.call(Command("counter", "c1", "get", {}, USER))
    assert reply["history"] == [1]


async def test_op_id_makes_retries_idempotent_even_after_restart(host):
    r1 = await host.call(add(7, op_id="op-1"))
    r2 = await host.call(add(7, op_id="op-1"))
    assert r1 == r2
    h2 = EntityHost("h0", host.store, {"counter": Counter}, Env())
    await h2.start()
    r3 = await h2.call(add(7, op_id="op-1"))
    assert r3 == r1
    reply, _ = await h2.call(Command("counter", "c1", "get", {}, USER))
    assert reply["history"] == [7]
    await h2.close(passivate=False)


async def test_stale_epoch_write_is_refused(host):
    await host.call(add(1))
    # another host takes the entity over (acquires a newer epoch) and writes
    h2 = EntityHost("h1", host.store, {"counter": Counter}, Env())
    await h2.start()
    await h2.call(add(10))
    with pytest.raises(SyncopateError) as e:
        await host.call(add(100))
    assert e.value.code == ErrorCode.STALE_EPOCH
    reply, _ = await h2.call(Command("counter", "c1", "get", {}, USER))
    assert reply["history"] == [1, 10]
    await h2.close(passivate=False)


async def test_refusal_changes_nothing_and_bug_evicts(host):
    await host.call(add(3))
    with pytest.raises(SyncopateError) as e:
        await host.call(Command("counter", "c1", "add", {"n": "x"}, USER))
    assert e.value.code == ErrorCode.INVALID_FIELD
    with pytest.raises(SyncopateError) as e:
        await host.call(Command("counter", "c1", "boom", {}, USER))
    assert e.value.code == ErrorCode.INTERNAL
    reply, _ = await host.call(Command("counter", "c1", "get", {}, USER))
    assert reply["total"] == 3          # the half-applied bug was thrown away with the evicted entity


async def test_snapshots_compact_the_log_and_passivation_frees_memory(host):
    for i in range(12):
        await host.call(add(1))
    await host.drain()
    for _ in range(100):
        if host.store.record_count("counter:c1") < 12:
            break
        await asyncio.sleep(0.005)
    assert host.store.record_count("counter:c1") < 12
    assert await host.passivate_idle(now=host.clock() + 10_000) == 1
    assert "counter:c1" not in host.slots
    reply, version = await host.call(Command("counter", "c1", "get", {}, USER))
    assert reply["total"] == 12 and version == 12


async def test_group_commits_are_counted_by_size_and_duration(host):
    from actors.host_metrics import COMMIT_SIZE_BOUNDS
    await host.call(add(1))                                       # a commit of one entry
    await asyncio.gather(*(host.call(add(1, eid=f"k{i}")) for i in range(5)))   # up to five in a commit
    st = host.stats()
    assert sum(st["commit_ms_hist"]) == st["commits"] == sum(st["commit_size_hist"])
    assert st["commit_size_hist"][0] >= 1                         # the single-entry commit
    assert st["committed_entries"] == 6 and st["commit_size_hist"][-1] == 0
    # each commit counted under the bucket of its size: the buckets' upper bounds cover the six entries
    assert 6 <= sum(n * b for b, n in zip(COMMIT_SIZE_BOUNDS, st["commit_size_hist"])) <= 6 * 2
    assert st["store_timing"] == {}                               # the memory store keeps none


async def test_the_idle_sweep_visits_only_the_entities_unused_for_the_timeout():
    """passivate_idle walks the slots in order of last use and stops at the first one used within
    the idle timeout: at 10,000 entities a walk of all of them stalled the host's loop every sweep.
    The stale ones are all visited (a refusing one does not stop the walk), the fresh ones never,
    and the walk gives the loop a turn between chunks of IDLE_SCAN_CHUNK."""
    from collections import OrderedDict

    from actors.residency import IDLE_SCAN_CHUNK

    class Walked(OrderedDict):
        """The host's slots, counting the values a walk reads."""
        read = 0

        def values(self):
            for v in super().values():
                self.read += 1
                yield v

    now = [1000.0]

    class Sticky(Counter):
        def idle(self):
            return not self.id.startswith("busy")

    h = EntityHost("h0", MemoryStore(), {"counter": Sticky}, Env(), idle_timeout_s=60, clock=lambda: now[0])
    await h.start()
    try:
        stale = [f"busy{i}" if i % 2 else f"old{i}" for i in range(600)]
        assert len(stale) // 2 > IDLE_SCAN_CHUNK      # the ones left to refuse fill more than a chunk
        for eid in stale:
            await h.call(add(1, eid=eid))
        now[0] += 10           # under the housekeeping's own sweep period (15 s here): it never sweeps
        for i in range(400):
            await h.call(add(1, eid=f"new{i}"))
        await h.call(add(1, eid="old0"))        # used again: it moves to the fresh end
        await h.drain()
        h.slots = Walked(h.slots)
        other_turns = 0

        async def other():
            nonlocal other_turns
            while True:
                other_turns += 1
                await asyncio.sleep(0)

        # 55 s on: the first 599 are 65 s old, the rest 55 s
        assert await h.passivate_idle(now=now[0] + 55) == 299  # old2 ... old598 (old0 was used again)
        assert h.slots.read == 600              # the 599 stale ones and the first fresh one
        # left stale: the 300 that refuse, more than a chunk; walking them passivates nothing (no
        # store write to wait for), and still the loop gets a turn in the middle
        t = asyncio.create_task(other())
        await asyncio.sleep(0)
        before = other_turns
        assert await h.passivate_idle(now=now[0] + 55) == 0
        assert other_turns > before
        t.cancel()
        assert all(f"counter:busy{i}" in h.slots for i in range(1, 600, 2))
        assert "counter:old0" in h.slots and "counter:new0" in h.slots and "counter:old2" not in h.slots
    finally:
        await h.close(passivate=False)
