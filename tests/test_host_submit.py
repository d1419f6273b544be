"""EntityHost.submit (a gateway's batch): a command for a resident, idle entity is handled in the
call (no task per command), behind the same output gate, in the same per-entity order."""
import asyncio

import pytest

from actors.entity import Command, Env, Principal
from actors.host import EntityHost
from protocols.wire import Reply
from storage.memory import MemoryStore
from tests.toy import Counter

USER = Principal("alice")


def add(n, eid="c1", op_id=None):
    return Command("counter", eid, "add", {"n": n}, USER, op_id=op_id)


class Gateway:
    """The host's deliver for one gateway: every item it was handed, in order."""

    def __init__(self):
        self.items: list = []
        self.arrived = asyncio.Event()

    def deliver(self, gw, items):
        self.items.extend(items)
        self.arrived.set()

    def answers(self) -> dict:
        return {token: reply for tag, token, reply in self.items if tag == "r"}

    async def wait_for(self, n: int, timeout: float = 5.0) -> None:
        async def enough():
            while len(self.answers()) < n:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(enough(), timeout)


@pytest.fixture
async def gw_host():
    gw = Gateway()
    h = EntityHost("h0", MemoryStore(), {"counter": Counter}, Env(), idle_timeout_s=3600, deliver=gw.deliver)
    await h.start()
    yield gw, h
    await h.close(passivate=False)


async def test_a_resident_entitys_command_is_handled_in_the_call(gw_host):
    gw, host = gw_host
    await host.call(add(1))                       # activated: resident and idle now
    tasks = len(asyncio.all_tasks())
    host.submit("g", [(1, add(2))])
    # handled in the call: its outcome waits behind the output gate already, no task was made for it
    assert host._outstanding == 1 and len(asyncio.all_tasks()) == tasks
    assert not host.slots["counter:c1"].draining
    await gw.wait_for(1)
    assert gw.answers()[1].payload == {"total": 3} and gw.answers()[1].version == 2


async def test_no_answer_leaves_before_its_commit(gw_host):
    gw, host = gw_host
    await host.call(add(1))
    store = host.store
    real_append, gate, committing = store.append, asyncio.Event(), asyncio.Event()

    async def held_append(batch):
        committing.set()
        await gate.wait()                          # the commit is under way: nothing may be answered
        return await real_append(batch)

    store.append = held_append
    host.submit("g", [(1, add(2)), (2, add(3))])
    await asyncio.wait_for(committing.wait(), 5)
    await asyncio.sleep(0)                         # the release would run in this turn if it could
    assert gw.items == []
    gate.set()
    await gw.wait_for(2)
    answers = gw.answers()
    assert [answers[1].version, answers[2].version] == [2, 3]
    loaded = await real_append.__self__.load("counter:c1")
    assert [r.seq for r in loaded.records][-2:] == [2, 3]      # committed before they were answered


async def test_order_per_entity_across_the_fast_path_and_the_task(gw_host):
    gw, host = gw_host
    # c2 is not active: its first command takes the task (activation); the rest of the batch for c2
    # queues behind it; c1 (resident) is handled in the call
    await host.call(add(1, eid="c1"))
    host.submit("g", [(1, add(1, eid="c2")), (2, add(10, eid="c1")), (3, add(2, eid="c2")), (4, add(3, eid="c2"))])
    await gw.wait_for(4)
    a = gw.answers()
    assert [a[t].payload["total"] for t in (1, 3, 4)] == [1, 3, 6]
    assert [a[t].version for t in (1, 3, 4)] == [1, 2, 3]
    assert a[2].payload["total"] == 11
    # and once c2 is resident and idle its next command is handled in the call too
    host.submit("g", [(5, add(4, eid="c2"))])
    assert not host.slots["counter:c2"].draining
    await gw.wait_for(5)
    assert gw.answers()[5].payload["total"] == 10


async def test_a_bug_in_a_fast_path_command_evicts_and_answers_internal(gw_host):
    gw, host = gw_host
    await host.call(add(1))
    host.submit("g", [(1, Command("counter", "c1", "boom", {}, USER)), (2, add(5))])
    await gw.wait_for(2)
    a = gw.answers()
    assert a[1].error is not None and a[1].error.code.value == "INTERNAL"
    # the half-changed entity (+1000 in memory) was dropped: the command behind it ran on a fresh
    # activation from the store (in the old task path it was refused retryably with the slot)
    assert a[2].error is None and a[2].payload == {"total": 6}
    reply, version = await host.call(Command("counter", "c1", "get", {}, USER))
    assert reply["total"] == 6 and version == 2


async def test_submit_after_a_phantom_read_acquires_and_writes(gw_host):
    gw, host = gw_host
    host.submit("g", [(1, Command("counter", "new", "get", {}, USER))])     # nothing stored: a phantom
    await gw.wait_for(1)
    host.submit("g", [(2, add(7, eid="new")), (3, add(1, eid="new"))])
    await gw.wait_for(3)
    a = gw.answers()
    assert a[1].payload["total"] == 0 and [a[2].payload["total"], a[3].payload["total"]] == [7, 8]
    assert isinstance(a[3], Reply) and a[3].version == 2
