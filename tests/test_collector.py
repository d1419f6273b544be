"""The clocked sweeps of a gateway or host process (actors/collector.py): cyclic garbage is freed
within the period even when the count-based collector never fires, a sweep freezes what survives it
(the next one walks only what is newer), old cycles wait for the full sweep, and a slow collection
spaces the next one out."""
from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from actors import collector
from actors.collector import CollectSchedule, from_env


class _Node:
    def __init__(self) -> None:
        self.me = self               # a reference cycle: only the collector frees it
        self.payload = bytearray(1000)


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def unfrozen():
    # a sweep freezes every survivor of the test process: give them back to the collector after
    yield
    gc.unfreeze()


@pytest.fixture
def no_automatic_gc():
    # the processes' thresholds make count-based collections rare in a steady state; here: never
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _garbage(n: int) -> list[weakref.ref]:
    refs = []
    for _ in range(n):
        node = _Node()
        refs.append(weakref.ref(node))
    return refs


def test_cyclic_garbage_waits_for_the_period_then_is_freed(no_automatic_gc):
    clock = _Clock()
    s = CollectSchedule(every_s=60.0, clock=clock, cpu=lambda: 0.0)
    refs = _garbage(1000)
    clock.t += 59.0
    assert s.step() is False
    assert sum(r() is not None for r in refs) == 1000       # not due: nothing collected
    clock.t += 1.0
    assert s.step() is True
    assert sum(r() is not None for r in refs) == 0
    assert s.collections == 1 and s.freed >= 1000
    assert s.delay() == 60.0


def test_a_sweep_freezes_its_survivors_and_old_cycles_wait_for_the_full_sweep(no_automatic_gc):
    clock = _Clock()
    # no CPU budget in play (cpu constant): in a process holding a whole test suite's objects a
    # real full sweep can take long enough to push the next one past the test clock's step
    s = CollectSchedule(every_s=10.0, full_every_s=100.0, clock=clock, cpu=lambda: 0.0)
    old = [_Node() for _ in range(500)]
    old_refs = [weakref.ref(n) for n in old]
    frozen = gc.get_freeze_count()
    clock.t += 10.0
    assert s.step() is True and s.full == 0
    # what survived the sweep is out of the next sweeps' walk
    assert gc.get_freeze_count() >= frozen + 500
    del old                                   # cycles among frozen objects: only a full sweep sees them
    young = _garbage(500)
    clock.t += 10.0
    assert s.step() is True and s.full == 0
    assert sum(r() is not None for r in young) == 0          # died young: freed by the sweep
    assert sum(r() is not None for r in old_refs) == 500     # old: still waiting
    clock.t = 1000.0 + 100.0
    assert s.step() is True and s.full == 1
    assert sum(r() is not None for r in old_refs) == 0
    assert s.delay() == 10.0


def test_a_full_sweep_that_was_slow_spaces_the_next_full_one():
    clock, cpu = _Clock(), _Clock()
    kinds = []

    def collect(kind: str, cost: float):
        def run() -> int:
            cpu.t += cost
            kinds.append(kind)
            return 0
        return run

    s = CollectSchedule(every_s=10.0, full_every_s=100.0, max_share=0.01, clock=clock, cpu=cpu, burst_s=0.0,
                        collect=collect("sweep", 0.001), collect_all=collect("full", 2.0))
    clock.t += 100.0
    assert s.step() is True and kinds == ["full"]
    assert s.last_full_s == 2.0
    assert s.next_full_at == clock.t + 200.0                 # 2 s of CPU: at most 1 % -> 200 s apart
    assert s.delay() == 200.0                                # and the sweep after it too
    clock.t += 200.0
    assert s.step() is True and kinds == ["full", "full"]
    assert s.full == 2 and s.collections == 2
    clock.t += 199.0
    assert s.step() is False                                 # neither kind before 200 s


def test_a_slow_collection_puts_the_next_one_further_off():
    clock, cpu = _Clock(), _Clock()

    def slow_collect() -> int:
        clock.t += 30.0              # waiting for a core: not what the budget counts
        cpu.t += 3.0                 # 3 s of CPU: at most 1 % of the time -> 300 s apart
        return 0

    s = CollectSchedule(every_s=60.0, max_share=0.01, full_every_s=10_000.0, clock=clock, cpu=cpu,
                        collect=slow_collect, burst_s=0.0)
    clock.t += 60.0
    assert s.step() is True
    assert s.last_s == 3.0
    assert s.delay() == 300.0
    clock.t += 299.0
    assert s.step() is False
    clock.t += 1.0
    assert s.step() is True and s.collections == 2


def test_the_period_from_the_environment():
    assert from_env({}).every_s == collector.EVERY_S == 2.0
    assert from_env({}).full_every_s == collector.FULL_EVERY_S == 600.0
    assert from_env({collector.ENV: "15"}).every_s == 15.0
    assert from_env({collector.ENV_FULL: "120"}).full_every_s == 120.0
    assert from_env({collector.ENV: "60", collector.ENV_FULL: "30"}).full_every_s == 60.0   # every one full
    with pytest.raises(ValueError, match="SYNCOPATE_GC_FULL_EVERY_S"):
        from_env({collector.ENV_FULL: "-5"})
    assert from_env({collector.ENV: "0"}) is None
    with pytest.raises(ValueError, match="SYNCOPATE_GC_EVERY_S"):
        from_env({collector.ENV: "-1"})
    with pytest.raises(ValueError):
        CollectSchedule(every_s=60.0, max_share=0.0)


async def test_the_task_collects_on_the_loop(no_automatic_gc):
    collected = asyncio.Event()

    def collect() -> int:
        n = gc.collect()
        collected.set()
        return n

    s = CollectSchedule(every_s=0.05, collect=collect)
    refs = _garbage(100)
    task = asyncio.get_running_loop().create_task(collector.run(s))
    try:
        await asyncio.wait_for(collected.wait(), 10.0)
    finally:
        task.cancel()
    assert s.collections >= 1
    assert sum(r() is not None for r in refs) == 0


def test_one_costly_sweep_does_not_space_out_the_sweeps_after_it():
    """The first sweep after a burst (W2's set-up: 95-159 ms in the gateway) walks what the burst
    made; the budget absorbs it and the next sweep is still due in every_s, so it walks 2 s of new
    objects rather than 10 s of them. A steady cost over the share is still held to it."""
    clock, cpu = _Clock(), _Clock()
    costs = [0.12] + [0.01] * 20

    def collect() -> int:
        cpu.t += costs.pop(0) if costs else 0.01
        return 0

    s = CollectSchedule(every_s=2.0, max_share=0.01, full_every_s=10_000.0, clock=clock, cpu=cpu, collect=collect)
    clock.t += 2.0
    assert s.step() is True and s.last_s == pytest.approx(0.12)
    assert s.delay() == 2.0                                  # the old rule: 12 s
    for _ in range(20):
        clock.t += 2.0
        assert s.step() is True
    assert s.balance_s > 0                                   # 10 ms every 2 s is under 1 %: repaid

    # a process whose every sweep costs 60 ms (3 % at a 2 s period) is held to 1 % in the long run
    clock2, cpu2 = _Clock(), _Clock()

    def costly() -> int:
        cpu2.t += 0.06
        return 0

    s2 = CollectSchedule(every_s=2.0, max_share=0.01, full_every_s=10_000.0, clock=clock2, cpu=cpu2, collect=costly)
    while clock2.t < 3600.0:
        clock2.t += max(s2.delay(), 0.001)
        s2.step()
    assert s2.total_s <= 0.01 * 3600.0 + s2.burst_s + 0.06


def test_the_trim_runs_after_the_collection_inside_the_budget():
    clock, calls = _Clock(), []

    def cpu() -> float:
        return float(len(calls))             # each call below costs one CPU second

    def collect() -> int:
        calls.append("collect")
        return 0

    def trim() -> int:
        calls.append("trim")
        return 1

    s = CollectSchedule(every_s=60.0, max_share=0.01, clock=clock, cpu=cpu, collect=collect, trim=trim, burst_s=0.0)
    clock.t += 60.0
    assert s.step() is True
    assert calls == ["collect", "trim"]
    assert s.trims == 1 and s.stats()["malloc_trims"] == 1
    assert s.last_s == 2.0 and s.delay() == 200.0     # the trim's time counts in the 1 % share


def test_the_trim_runs_once_a_minute_not_after_every_sweep():
    clock, calls = _Clock(), []

    def collect() -> int:
        calls.append("collect")
        return 0

    def trim() -> int:
        calls.append("trim")
        return 1

    s = CollectSchedule(every_s=2.0, clock=clock, cpu=lambda: 0.0, collect=collect, collect_all=collect,
                        trim=trim, trim_every_s=60.0)
    for _ in range(60):                      # two minutes of sweeps every 2 s
        clock.t += 2.0
        assert s.step() is True
    assert calls.count("collect") == 60 and calls.count("trim") == 2
    assert calls.index("trim") == 30         # the first after the sweep at t = 60 s


def test_the_trim_from_the_environment():
    assert from_env({collector.TRIM_ENV: "0"})._trim is None
    assert from_env({})._trim is not None              # glibc (the servers' platform)


def _rss_anon_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_malloc_trim_gives_free_arena_memory_back():
    """Blocks above pymalloc's 512 bytes come from glibc; freed in the middle of the heap (a live
    block above them), they stay in RSS until malloc_trim hands their pages back."""
    trim = collector._libc_trim()
    assert trim is not None
    blocks = [bytes(4000) for _ in range(10_000)]      # ~40 MB from glibc's heap
    keep = blocks[63::64]                              # pins the heap's top: no automatic trim
    del blocks
    before = _rss_anon_kb()
    trim()
    after = _rss_anon_kb()
    assert keep and before - after > 20_000, (before, after)
