"""EntityHost at its edges: interest ordered with the mailbox, reads that create no state, budgets,
idempotency per sender."""
import asyncio
import time
import random

import pytest

from actors.entity import Command, Env, Principal
from actors.host import EntityHost
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import Push
from storage.memory import MemoryStore
from tests.toy import Counter

ALICE = Principal("alice")
BOB = Principal("bob")


def cmd(op, eid="c1", p=ALICE, **kw):
    args = {k: v for k, v in kw.items() if k in ("n", "tell", "pad")}
    rest = {k: v for k, v in kw.items() if k not in args}
    return Command("counter", eid, op, args, p, **rest)


async def wait_for(pred, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


class Gate:
    """Holds store.append until opened; `entered` is set when a commit is waiting at the gate."""

    def __init__(self, store):
        self.store, self.real = store, store.append
        self.open, self.entered = asyncio.Event(), asyncio.Event()
        store.append = self.append

    async def append(self, batch):
        self.entered.set()
        await self.open.wait()
        return await self.real(batch)


@pytest.fixture
async def wired():
    store = MemoryStore()
    delivered: list = []
    h = EntityHost("h0", store, {"counter": Counter}, Env(), idle_timeout_s=3600,
                   deliver=lambda gw, items: delivered.extend((gw, it) for it in items))
    await h.start()
    yield h, delivered
    await h.close(passivate=False)


# -- interest ----------------------------------------------------------------------------------
async def test_an_unsubscribe_does_not_deafen_a_subscribe_waiting_for_its_commit(wired):
    host, delivered = wired
    await host.call(cmd("subscribe", origin=("g0", "a")))
    gate = Gate(host.store)
    write = asyncio.create_task(host.call(cmd("add", n=1)))
    await asyncio.wait_for(gate.entered.wait(), 5)            # the write's commit is in the store
    sub_b = asyncio.create_task(host.call(cmd("subscribe", origin=("g0", "b"))))   # waits behind it
    unsub_a = asyncio.create_task(host.call(cmd("unsubscribe", origin=("g0", "a"))))
    await wait_for(lambda: not host.slots["counter:c1"].mailbox)
    gate.open.set()
    await asyncio.gather(write, sub_b, unsub_a)
    assert host.interest == {"counter:c1": {"g0": {"b"}}}
    delivered.clear()
    _, v = await host.call(cmd("add", n=2))
    await wait_for(lambda: any(isinstance(it, Push) and it.version == v for _, it in delivered))
    assert [gw for gw, it in delivered if isinstance(it, Push)] == ["g0"]


async def test_interest_keys_are_deleted_when_empty_and_unsubscribe_activates_nothing(wired):
    host, delivered = wired
    await host.call(cmd("add", n=1))
    await host.call(cmd("subscribe", origin=("g0", "a")))
    await host.call(cmd("subscribe", origin=("g1", "a")))
    await host.call(cmd("unsubscribe", origin=("g0", "a")))
    assert host.interest == {"counter:c1": {"g1": {"a"}}}
    await host.call(cmd("unsubscribe", origin=("g1", "a")))
    assert host.interest == {}
    acquired = dict(host.store._epochs)
    await host.call(cmd("unsubscribe", eid="never-active", origin=("g0", "a")))
    assert "counter:never-active" not in host.slots and host.store._epochs == acquired


async def test_interest_is_added_only_by_a_successful_subscribe(wired):
    host, delivered = wired
    await host.call(cmd("add", n=1))
    gate = Gate(host.store)
    write = asyncio.create_task(host.call(cmd("add", n=2)))
    await asyncio.wait_for(gate.entered.wait(), 5)
    sub = asyncio.create_task(host.call(cmd("subscribe", origin=("g0", "a"))))
    await wait_for(lambda: not host.slots["counter:c1"].mailbox)
    host.store.fail_next = SyncopateError(ErrorCode.STORE_UNAVAILABLE, "gone")
    gate.open.set()
    with pytest.raises(SyncopateError):
        await write
    with pytest.raises(SyncopateError):
        await sub                 # it answered state that included the failed write: refused, no interest
    assert host.interest == {}


# -- reads create no state -----------------------------------------------------------------------
async def test_reads_and_subscribes_of_unknown_ids_write_nothing_and_stay_resident_nowhere(wired):
    host, delivered = wired
    rng = random.Random(7)
    ids = [f"r{rng.randrange(10**9)}" for _ in range(1000)]
    replies = await asyncio.gather(*(host.call(cmd("get" if i % 2 else "subscribe", eid=e, origin=("g0", f"k{i}")))
                                     for i, e in enumerate(ids)))
    assert all(r == ({"total": 0, "history": []}, 0) for r in replies)
    await host.drain()
    assert host.store._epochs == {} and host.store._records == {}
    assert len(host.slots) == 0 and host.metrics.phantoms == 1000


async def test_a_write_on_a_phantom_acquires_and_is_applied_once(wired):
    host, delivered = wired
    r = await asyncio.gather(host.call(cmd("get")), host.call(cmd("add", n=5)), host.call(cmd("get")))
    assert [x[0]["total"] for x in r] == [0, 5, 5] and [x[1] for x in r] == [0, 1, 1]
    assert host.store._epochs == {"counter:c1": 1} and host.store.record_count("counter:c1") == 1


async def test_a_phantom_created_meanwhile_by_another_host_is_reloaded_before_the_write(wired):
    host, delivered = wired
    other = EntityHost("h1", host.store, {"counter": Counter}, Env())
    await other.start()
    real_acquire = host.store.acquire
    acquiring, go = asyncio.Event(), asyncio.Event()

    async def acquire(key):
        if not acquiring.is_set():          # the first acquire (this host's) waits at the gate
            acquiring.set()
            await go.wait()
        return await real_acquire(key)

    host.store.acquire = acquire
    write = asyncio.create_task(host.call(cmd("add", n=1)))        # on a phantom: must acquire
    await asyncio.wait_for(acquiring.wait(), 5)
    await other.call(cmd("add", n=10))           # the other host creates it meanwhile
    await other.close(passivate=False)
    go.set()
    reply, version = await write
    assert reply == {"total": 11} and version == 2
    assert (await host.call(cmd("get")))[0]["history"] == [10, 1]


# -- budgets -------------------------------------------------------------------------------------------
async def test_a_full_mailbox_refuses_at_once_with_a_retryable_error():
    store = MemoryStore()
    host = EntityHost("h0", store, {"counter": Counter}, Env(), max_mailbox=3)
    await host.start()
    real_load, go = store.load, asyncio.Event()

    async def load(key):
        await go.wait()
        return await real_load(key)

    store.load = load
    calls = [asyncio.create_task(host.call(cmd("add", n=1))) for _ in range(5)]
    await wait_for(lambda: host.metrics.refused_mailbox == 2)
    refused = [c for c in calls if c.done()]
    assert len(refused) == 2 and all(c.exception().code == ErrorCode.OVERLOADED and c.exception().retryable
                                     for c in refused)
    go.set()
    assert [(await c)[1] for c in calls[:3]] == [1, 2, 3]
    await host.close(passivate=False)


async def test_too_many_pending_outcomes_are_refused_until_released():
    store = MemoryStore()
    host = EntityHost("h0", store, {"counter": Counter}, Env(), max_pending=2)
    await host.start()
    gate = Gate(store)
    a = asyncio.create_task(host.call(cmd("add", eid="a", n=1)))
    b = asyncio.create_task(host.call(cmd("add", eid="b", n=1)))
    await wait_for(lambda: host._outstanding == 2)
    with pytest.raises(SyncopateError) as e:
        await host.call(cmd("add", eid="c", n=1))
    assert e.value.code == ErrorCode.OVERLOADED and host.metrics.refused_pending == 1
    gate.open.set()
    await asyncio.gather(a, b)
    assert (await host.call(cmd("add", eid="c", n=1)))[1] == 1
    await host.close(passivate=False)


async def test_over_max_active_the_least_recently_used_idle_entities_are_passivated():
    store = MemoryStore()
    host = EntityHost("h0", store, {"counter": Counter}, Env(), max_active=5, idle_timeout_s=3600)
    await host.start()
    for i in range(12):
        await host.call(cmd("add", eid=f"e{i}", n=i))
    await wait_for(lambda: len(host.slots) <= 5)
    assert host.metrics.budget_passivations >= 7
    assert "counter:e11" in host.slots and "counter:e0" not in host.slots      # least recently used went first
    assert [(await host.call(cmd("get", eid=f"e{i}")))[0]["total"] for i in range(12)] == list(range(12))
    await host.close(passivate=False)


async def test_over_the_memory_budget_idle_entities_are_passivated_until_it_holds():
    store = MemoryStore()
    used = {"bytes": 0}
    host = EntityHost("h0", store, {"counter": Counter}, Env(), idle_timeout_s=3600,
                      max_memory=1000, memory=lambda: used["bytes"])
    await host.start()
    for i in range(40):
        await host.call(cmd("add", eid=f"m{i}", n=i))
    assert len(host.slots) == 40                 # under budget: all resident
    used["bytes"] = 2000                         # now over: a tenth a round, oldest first
    await wait_for(lambda: host.metrics.budget_passivations >= 4)
    assert "counter:m0" not in host.slots and "counter:m39" in host.slots
    await wait_for(lambda: not host._shedding)
    used["bytes"] = 500                          # back under: shedding stops
    settled, n, t = host.metrics.budget_memory_over, len(host.slots), time.monotonic()
    await wait_for(lambda: host._next_memory_check > t + 0.999, timeout=5)   # a check ran since
    assert host.metrics.budget_memory_over == settled and len(host.slots) == n
    assert [(await host.call(cmd("get", eid=f"m{i}")))[0]["total"] for i in range(40)] == list(range(40))
    await host.close(passivate=False)


# -- idempotency per sender ------------------------------------------------------------------------------
async def test_another_users_op_id_never_returns_the_first_users_reply(wired):
    host, delivered = wired
    assert await host.call(cmd("add", n=1, op_id="same")) == ({"total": 1}, 1)
    assert await host.call(cmd("add", p=BOB, n=2, op_id="same")) == ({"total": 3}, 2)
    assert await host.call(cmd("add", n=1, op_id="same")) == ({"total": 1}, 1)        # alice's retry
    h2 = EntityHost("h1", host.store, {"counter": Counter}, Env())
    await h2.start()
    assert await h2.call(cmd("add", p=BOB, n=2, op_id="same")) == ({"total": 3}, 2)   # from the log
    assert (await h2.call(cmd("get")))[0]["history"] == [1, 2]
    await h2.close(passivate=True)
    h3 = EntityHost("h2", host.store, {"counter": Counter}, Env())                 # and from the snapshot
    await h3.start()
    assert await h3.call(cmd("add", n=1, op_id="same")) == ({"total": 1}, 1)
    assert await h3.call(cmd("add", p=BOB, n=2, op_id="same")) == ({"total": 3}, 2)
    await h3.close(passivate=False)


async def test_log_entries_written_before_senders_were_recorded_still_load_and_dedupe():
    import msgpack
    from storage.base import Record
    store = MemoryStore()
    store._epochs["counter:c1"] = 1
    store._records["counter:c1"] = [Record(1, msgpack.packb({"op": "old", "recs": [5], "reply": {"total": 5}}))]
    host = EntityHost("h0", store, {"counter": Counter}, Env())
    await host.start()
    assert await host.call(cmd("add", n=5, op_id="old")) == ({"total": 5}, 1)
    assert (await host.call(cmd("get")))[0]["history"] == [5]
    await host.close(passivate=False)


async def test_the_op_cache_is_bounded_in_bytes_and_a_large_reply_is_answered_by_version(wired):
    from actors.opcache import OP_REPLY_BUDGET_BYTES
    host, delivered = wired
    big = "x" * 10_000
    assert (await host.call(cmd("add", n=1, op_id="big", pad=big)))[0]["pad"] == big
    assert await host.call(cmd("add", n=1, op_id="big", pad=big)) == (None, 1)        # not applied again
    for i in range(200):
        await host.call(cmd("add", n=1, op_id=f"m{i}", pad="y" * 3000))
    slot = host.slots["counter:c1"]
    assert slot.ops.bytes <= OP_REPLY_BUDGET_BYTES
    assert sum(len(rb) for _, rb in slot.ops.entries.values() if rb is not None) == slot.ops.bytes
    assert (await host.call(cmd("add", n=1, op_id="m199", pad="y" * 3000)))[0]["pad"] == "y" * 3000   # recent: full
    assert (await host.call(cmd("add", n=1, op_id="m0", pad="y" * 3000))) == (None, 2)               # old: version
    assert (await host.call(cmd("get")))[0]["total"] == 201


async def test_op_ids_are_remembered_for_the_retry_window_only():
    from actors.opcache import OP_RETRY_WINDOW_S
    now = {"t": 1000.0}
    host = EntityHost("h0", MemoryStore(), {"counter": Counter}, Env(), idle_timeout_s=3600,
                      clock=lambda: now["t"])
    await host.start()
    first, v1 = await host.call(cmd("add", eid="w", n=1, op_id="op-1"))
    assert await host.call(cmd("add", eid="w", n=1, op_id="op-1")) == (first, v1)      # a retry: answered
    now["t"] += OP_RETRY_WINDOW_S + 1
    await host.call(cmd("add", eid="w", n=5, op_id="op-2"))                            # prunes the window
    slot = host.slots["counter:w"]
    assert [k[1] for k in slot.ops.entries] == ["op-2"] and set(slot.ops.at) == set(slot.ops.entries)
    _, v3 = await host.call(cmd("add", eid="w", n=1, op_id="op-1"))                   # long after: a new op
    assert v3 == v1 + 2
    await host.close(passivate=False)
