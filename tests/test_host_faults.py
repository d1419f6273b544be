"""Faults between commit and delivery: two EntityHosts in one process, wired to each other for effects
(the source's counter adds what it is given to target counters: a derived view), memory stores with
fault hooks. What must hold: an acknowledged change is never lost, every effect is applied exactly
once at its target, and a subscriber never misses a committed version without a Gap for it."""
import asyncio

import pytest

import actors.outbox as outbox_module
from actors.entity import Command, Env, Principal
from actors.host import EntityHost
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import Gap, Push
from storage.memory import MemoryStore
from tests.toy import Counter

ALICE = Principal("alice")
KINDS = {"counter": Counter}


def add(eid, n, op_id=None, tell=()):
    return Command("counter", eid, "add", {"n": n, "tell": list(tell)}, ALICE, op_id=op_id)


def get(eid):
    return Command("counter", eid, "get", {}, ALICE)


def subscribe(eid, gw, conn="c"):
    return Command("counter", eid, "subscribe", {}, ALICE, origin=(gw, conn))


async def wait_for(pred, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


class Pair:
    """A source host (its store, its gateways' deliveries) whose effects go to a target host."""

    def __init__(self) -> None:
        self.src_store, self.dst_store = MemoryStore(), MemoryStore()
        self.delivered: list = []           # (gateway, item) from the source host
        self.sent: list = []                # effect op ids the source dispatched
        self.black_hole = False             # the source "dies" between its commit and the send
        self.src = self._source()
        self.dst = EntityHost("dst", self.dst_store, KINDS, Env())

    def _source(self) -> EntityHost:
        return EntityHost("src", self.src_store, KINDS, Env(), dispatch=self._dispatch,
                          deliver=lambda gw, items: self.delivered.extend((gw, it) for it in items))

    def _dispatch(self, cmd: Command):
        self.sent.append(cmd.op_id)
        fut = asyncio.get_running_loop().create_future()
        if not self.black_hole:
            self.dst.enqueue(cmd, lambda reply: fut.done() or fut.set_result(reply))
        return fut

    async def start(self) -> "Pair":
        await self.src.start()
        await self.dst.start()
        return self

    async def restart_source(self) -> None:
        """Kill the source (no final snapshot) and start a new one on the same store."""
        await self.src.close(passivate=False)
        self.src = self._source()
        await self.src.start()

    async def history(self, eid: str) -> list:
        return (await self.dst.call(get(eid)))[0]["history"]

    async def eventually_history(self, eid: str, expected: list, timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while (h := await self.history(eid)) != expected:
            assert asyncio.get_running_loop().time() < deadline, f"target history {h}, expected {expected}"
            await asyncio.sleep(0.002)

    def outbox(self) -> int:
        return sum(len(s.outbox) for s in self.src.slots.values())

    def items(self, gw: str, key: str) -> list:
        return [it for g, it in self.delivered if g == gw and isinstance(it, (Push, Gap)) and it.key == key]

    def assert_no_silent_gap(self, gw: str, key: str, since: int, committed: int) -> None:
        """Every version in (since, committed] reached `gw` as a fresh push, or a Gap below it did."""
        items = self.items(gw, key)
        pushed = {it.version for it in items if isinstance(it, Push) and it.fresh}
        gaps = [it.version for it in items if isinstance(it, Gap)]
        for v in range(since + 1, committed + 1):
            assert v in pushed or any(g < v for g in gaps), f"version {v} of {key} reached {gw} silently lost"

    async def close(self) -> None:
        await self.src.close(passivate=False)
        await self.dst.close(passivate=False)


@pytest.fixture
async def pair():
    p = await Pair().start()
    yield p
    await p.close()


async def test_a_commit_that_raises_after_committing_gaps_the_subscribers_and_effects_arrive_once(pair):
    await pair.src.call(subscribe("s", "g0"))
    pair.src_store.fail_after_commit = TimeoutError("COMMIT timed out")
    with pytest.raises(SyncopateError) as e:
        await pair.src.call(add("s", 1, op_id="o1", tell=["d"]))
    assert e.value.retryable
    assert Gap("counter:s", 0) in pair.items("g0", "counter:s")
    # It did commit: the recovery re-activates the source, whose outbox sends the effect.
    await pair.eventually_history("d", [1])
    # The client's retry is answered from the log and changes nothing; the effect is not applied again.
    assert await pair.src.call(add("s", 1, op_id="o1", tell=["d"])) == ({"total": 1}, 1)
    await wait_for(lambda: pair.outbox() == 0)
    assert await pair.history("d") == [1]
    assert (await pair.src.call(get("s")))[0]["history"] == [1]
    _, v = await pair.src.call(add("s", 2))
    await wait_for(lambda: any(isinstance(it, Push) and it.version == v for it in pair.items("g0", "counter:s")))
    pair.assert_no_silent_gap("g0", "counter:s", 0, v)


async def test_a_source_killed_between_commit_and_dispatch_re_sends_on_activation(pair):
    pair.black_hole = True
    assert (await pair.src.call(add("s", 2, op_id="o2", tell=["d"])))[1] == 1   # acknowledged
    effect_id = pair.sent[-1]
    await pair.restart_source()                       # the effect never left
    pair.black_hole = False
    await pair.src.call(get("s"))                     # any message activates it: the outbox goes out
    await pair.eventually_history("d", [2])
    await wait_for(lambda: pair.outbox() == 0)
    # The acknowledgement rides on the next entry, so a later activation does not send it again.
    await pair.src.call(add("s", 3))
    await pair.restart_source()
    pair.sent.clear()
    await pair.src.call(get("s"))
    await pair.src.drain()
    assert effect_id not in pair.sent
    assert await pair.history("d") == [2]


async def test_the_snapshot_carries_the_outbox(pair):
    pair.black_hole = True
    await pair.src.call(add("s", 4, op_id="o4", tell=["d"]))
    await pair.src.close(passivate=True)               # a clean stop: snapshot, log compacted
    assert pair.src_store.record_count("counter:s") == 0
    pair.src = pair._source()
    await pair.src.start()
    pair.black_hole = False
    await pair.src.call(get("s"))
    await pair.eventually_history("d", [4])


async def test_a_target_whose_store_is_down_gets_the_effect_exactly_once_when_it_returns(pair):
    pair.dst_store.down = True
    await pair.src.call(add("s", 5, tell=["d"]))
    await wait_for(lambda: pair.src.metrics.effects_retried >= 3)      # refused STORE_UNAVAILABLE, re-sent
    assert pair.outbox() == 1
    pair.dst_store.down = False
    await pair.eventually_history("d", [5])
    await wait_for(lambda: pair.outbox() == 0)
    # Now the target's commit raises after committing: the source is told STORE_UNAVAILABLE and
    # re-sends; the target answers the effect's op id from its log.
    pair.dst_store.fail_after_commit = TimeoutError("COMMIT timed out")
    await pair.src.call(add("s", 6, tell=["d"]))
    await wait_for(lambda: pair.outbox() == 0)
    assert await pair.history("d") == [5, 6]
    assert pair.src.metrics.effects_acked == 2


async def test_a_retried_op_re_sends_its_unacknowledged_effects_at_once(pair, monkeypatch):
    monkeypatch.setattr(outbox_module, "EFFECT_BACKOFF_S", (30.0, 30.0))   # the backoff alone would wait 30 s
    pair.dst_store.down = True
    await pair.src.call(add("s", 7, op_id="o7", tell=["d"]))
    await wait_for(lambda: pair.src.metrics.effects_sent == 1 and not any(
        fx.sending for s in pair.src.slots.values() for fx in s.outbox.values()))
    pair.dst_store.down = False
    assert await pair.src.call(add("s", 7, op_id="o7", tell=["d"])) == ({"total": 7}, 1)
    await pair.eventually_history("d", [7])
    assert pair.src.metrics.effects_sent == 2


async def test_a_commit_timeout_with_unknown_outcome_sends_a_gap_to_every_interested_gateway(pair):
    await pair.src.call(add("s", 1))
    await pair.src.call(subscribe("s", "g0"))
    await pair.src.call(subscribe("s", "g1"))
    await pair.src.call(subscribe("other", "g2"))
    pair.src_store.fail_next = TimeoutError("COMMIT timed out")       # raised: nobody knows if it committed
    with pytest.raises(SyncopateError):
        await pair.src.call(add("s", 2, op_id="t1"))
    assert pair.items("g0", "counter:s") == [Gap("counter:s", 1)]
    assert pair.items("g1", "counter:s") == [Gap("counter:s", 1)]
    assert [it for g, it in pair.delivered if g == "g2"] == []
    # It did not commit here: the retry applies it, once, and the subscribers get it pushed.
    assert await pair.src.call(add("s", 2, op_id="t1")) == ({"total": 3}, 2)
    await wait_for(lambda: any(isinstance(it, Push) for it in pair.items("g1", "counter:s")))
    for gw in ("g0", "g1"):
        pair.assert_no_silent_gap(gw, "counter:s", 1, 2)


async def test_an_entity_evicted_while_its_commit_is_in_flight_still_releases_what_committed(pair):
    await pair.src.call(subscribe("s", "g0"))
    real, go, entered = pair.src_store.append, asyncio.Event(), asyncio.Event()

    async def gated(batch):
        entered.set()
        await go.wait()
        return await real(batch)

    pair.src_store.append = gated
    write = asyncio.create_task(pair.src.call(add("s", 1, tell=["d"])))
    await asyncio.wait_for(entered.wait(), 5)
    with pytest.raises(SyncopateError) as e:
        await pair.src.call(Command("counter", "s", "boom", {}, ALICE))   # a bug: evicts the entity
    assert e.value.code == ErrorCode.INTERNAL
    go.set()
    assert await write == ({"total": 1}, 1)           # it committed: released, not failed
    await wait_for(lambda: any(isinstance(it, Push) and it.version == 1 for it in pair.items("g0", "counter:s")))
    await pair.eventually_history("d", [1])
    pair.src_store.append = real
    assert (await pair.src.call(get("s")))[0]["total"] == 1
