"""EntityHost at its edges: interest ordered with the mailbox, reads that create no state, budgets,
idempotency per sender."""
import asyncio
import random

import pytest

from actors.entity import Command, Env, Principal
from actors.host import EntityHost
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import ConnAddress, Push
from storage.memory import MemoryStore
from tests.toy import Counter

ALICE = Principal("alice")
BOB = Principal("bob")


def cmd(op, eid="c1", p=ALICE, **kw):
    args = {k: v for k, v in kw.items() if k in ("n",)}
    rest = {k: v for k, v in kw.items() if k not in ("n",)}
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
