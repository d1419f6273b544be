"""When a gateway or host process collects its cyclic garbage: a full collection on a clock.

The processes raise the collector's thresholds (restore_priority in actors/ray_host.py: a young
collection every 50,000 net new objects instead of 700) and freeze what they loaded at start, so a
collection is rare and walks only what changed. The cost of that: in a steady state hardly any
objects are *net* new (most die young), so the count-based schedule nearly stops. Measured
(SYNCOPATE_MEMSTATS gc_collections, docs/performance.md "Soak"): in 12 minutes of a 100-user
`simulate mixed` without this clock, a host's young generation was collected 17 times and the
middle and full ones not at all; at the thresholds (50,000, 20, 100) a full collection comes after
2,000 young ones, more than a day at that rate. Cyclic garbage waits for it: a 50-user diagnosis run's probe found 6,697 unreachable objects after 8 minutes in a host
(the Records and Loaded of dropped slots, NOT_OWNER errors with their tracebacks and frames, the
outbox's closures). Bounded in the end, but not by anything an operator would call bounded. (It was
not what made the hosts' memory grow in the soak: that was live data.)

So a full collection also runs on a clock: every EVERY_S seconds, and never more than MAX_SHARE of
the CPU time (a collection that took d seconds puts the next one at least d / MAX_SHARE later: a
process holding millions of objects collects less often instead of pausing more). Garbage is then
freed within a minute or so, whatever the allocation pattern; the count-based collections go on as
before.

After each of these collections the process also hands glibc's free heap pages back to the kernel
(`malloc_trim(0)`, `trim()` below; inside the same CPU budget): glibc keeps the memory freed inside
its arenas and returns only the top of each heap, so a gateway whose Python objects and C heap in use
were flat still grew in RSS (docs/performance.md "Soak": +13 to +33 MB/h of free memory in its
arenas). SYNCOPATE_MALLOC_TRIM=0 turns it off.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import time
from typing import Callable

log = logging.getLogger("syncopate.collector")

EVERY_S = 60.0
MAX_SHARE = 0.01           # at most 1 % of the process's time in these collections
ENV = "SYNCOPATE_GC_EVERY_S"   # the period in the process's environment; 0 turns the clock off
TRIM_ENV = "SYNCOPATE_MALLOC_TRIM"   # 0: no malloc_trim after the clocked collection


def _libc_trim() -> Callable[[], int] | None:
    """glibc's malloc_trim, or None where there is none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: int(fn(0))


def trim_from_env(environ: dict | None = None) -> Callable[[], int] | None:
    raw = (os.environ if environ is None else environ).get(TRIM_ENV, "").strip()
    return None if raw == "0" else _libc_trim()


class CollectSchedule:
    """Due every `every_s`; after a collection of d CPU seconds, not again before d / max_share."""

    def __init__(self, every_s: float = EVERY_S, max_share: float = MAX_SHARE, *,
                 clock: Callable[[], float] = time.monotonic, cpu: Callable[[], float] = time.thread_time,
                 collect: Callable[[], int] = gc.collect, trim: Callable[[], int] | None = None) -> None:
        if every_s <= 0 or not 0 < max_share <= 1:
            raise ValueError("every_s must be positive and max_share in (0, 1]")
        self.every_s, self.max_share = every_s, max_share
        # the budget is CPU time (this thread's): on shared, busy cores the wall-clock length of a
        # collection is mostly time spent waiting for a core (measured: 10-40x under a load of 70)
        self._clock, self._cpu, self._collect, self._trim = clock, cpu, collect, trim
        self.trims = 0                 # malloc_trim calls that gave memory back (it answered 1)
        self.next_at = clock() + every_s
        self.collections = 0
        self.freed = 0                 # unreachable objects found, in total
        self.last_s = 0.0              # CPU seconds the last one took
        self.total_s = 0.0

    def delay(self) -> float:
        """Seconds until the next collection is due (0: due now)."""
        return max(0.0, self.next_at - self._clock())

    def step(self) -> bool:
        """Collect if due; True if it did."""
        if self._clock() < self.next_at:
            return False
        cpu0 = self._cpu()
        self.freed += self._collect()
        if self._trim is not None:
            self.trims += self._trim()     # after the collection: what it freed is in the arenas now
        self.last_s = self._cpu() - cpu0
        self.total_s += self.last_s
        self.collections += 1
        self.next_at = self._clock() + max(self.every_s, self.last_s / self.max_share)
        return True

    def stats(self) -> dict:
        return {"gc_scheduled": self.collections, "gc_scheduled_freed": self.freed,
                "gc_scheduled_last_ms": round(self.last_s * 1000, 1), "gc_scheduled_total_s": round(self.total_s, 3),
                "malloc_trims": self.trims}


def from_env(environ: dict | None = None) -> CollectSchedule | None:
    """The schedule SYNCOPATE_GC_EVERY_S asks for (default EVERY_S); None when it is 0."""
    import os
    raw = (os.environ if environ is None else environ).get(ENV, "").strip()
    every = float(raw) if raw else EVERY_S
    if every < 0:
        raise ValueError(f"{ENV} must be 0 (off) or a period in seconds, not {raw!r}")
    return CollectSchedule(every, trim=trim_from_env(environ)) if every > 0 else None


def start(label: str) -> "tuple[CollectSchedule, asyncio.Task] | None":
    """Start the process's collector task on the running loop (None: turned off)."""
    schedule = from_env()
    if schedule is None:
        log.warning("%s: scheduled full collections are off (%s=0)", label, ENV)
        return None
    return schedule, asyncio.get_running_loop().create_task(run(schedule), name=f"{label}-collector")


async def run(schedule: CollectSchedule) -> None:
    """The process's collector task (started by the Ray adapters once the process is ready). It runs
    on the event loop's thread: a collection is one synchronous pause, never concurrent with a
    handler."""
    while True:
        await asyncio.sleep(schedule.delay())      # the schedule itself: nothing to wait on
        schedule.step()
        if schedule.last_s > 0.05:
            log.warning("a scheduled full collection took %.0f ms of CPU (next in %.0f s)",
                        schedule.last_s * 1000, schedule.delay())
