"""When a gateway or host process collects its cyclic garbage: sweeps on a clock.

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

So the collector also runs on a clock, in two kinds of sweep:
- every EVERY_S seconds a *sweep* collects what is not frozen — the objects allocated since the
  previous sweep that are still alive, and any cyclic garbage among them — then freezes what
  survived (gc.freeze()). Its pause is proportional to what is new, not to the heap.
- every FULL_EVERY_S seconds a *full sweep* unfreezes everything first (gc.unfreeze()), so cyclic
  garbage among old objects (a long-lived session's dropped slot, a closed socket's objects) is
  freed too, then freezes the survivors again.
Why not one full collection a minute (what ran before): its pause is proportional to every object
the process holds. Measured with the stall recorder (syncopate/stalls.py) in `bench_library_push
--users 10000 --hosts 1 --gateways 2`: a gateway's clocked full collection took 450-585 ms of CPU
and the host's 155-210 ms (shared, loaded cores), finding 0 unreachable objects — a change arriving
meanwhile waits that long. A sweep walks the objects younger than the previous one (mostly each
socket's pending read: its coroutine, future, message), so the shorter the period the shorter the
pause: in one process holding 4,000 sockets and 2,000 sessions at 500 changes/s (LocalServer under
that benchmark, load average 25-40), full collections took 250-435 ms of CPU, sweeps every 5 s a
median 44 ms (max 69), sweeps every 1 s 10-12 ms (max 29) at 1.2-1.3 % of the CPU — so EVERY_S is
2 s and MAX_SHARE stretches it where a process is bigger. Garbage is freed within EVERY_S when it
dies young (most does: the errors with their tracebacks, the outbox's closures), and within
FULL_EVERY_S when it was old; the full sweep's pause is now ten times rarer than the old one's.

Never more than MAX_SHARE of the CPU time in either kind. A full sweep that took d seconds puts the
next one at least d / MAX_SHARE later. Sweeps draw on a budget instead (a token bucket): it fills at
MAX_SHARE of the wall-clock time up to BURST_S of CPU and each sweep spends what it took; the next
sweep is due every EVERY_S while the budget is not overdrawn, and when it is, once it is repaid.
Why not d / MAX_SHARE for sweeps too: a sweep's cost is what survived since the previous one, so
spacing out one costly sweep (the first after a burst of connections: W2's set-up of 3,000 sockets
made 95-159 ms sweeps in the gateway) makes the next walk as much again, and the period never came
back to 2 s: three sweeps of 54-159 ms in every 20 s W2 run, each inside that run's p99 and max
(docs/performance.md, "2026-12-02"). Over any window W the sweeps take at most MAX_SHARE * W +
BURST_S. A frozen object is still freed by its reference count the moment it is dropped; only a cycle among frozen objects waits for the full sweep. (While
objects are frozen, gc.get_objects() does not list them: syncopate/memdebug.py's type counts see
what is younger than the last sweep, so its probe unfreezes everything before it counts.)

After a sweep, at most once every TRIM_EVERY_S, the process also hands glibc's free heap pages back
to the kernel (`malloc_trim(0)`; inside the same CPU budget): glibc keeps the memory freed inside its
arenas and returns only the top of each heap, so a gateway whose Python objects and C heap in use
were flat still grew in RSS (docs/performance.md "Soak": +13 to +33 MB/h of free memory in its
arenas). Not after every 2 s sweep: a trim walks every arena, and what it gives back in a minute is
the same either way. SYNCOPATE_MALLOC_TRIM=0 turns it off.

SYNCOPATE_GC_EVERY_S (default EVERY_S; 0 turns the clock off) and SYNCOPATE_GC_FULL_EVERY_S (default
FULL_EVERY_S; at most SYNCOPATE_GC_EVERY_S makes every sweep a full one) set the periods.
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import time
from typing import Callable

log = logging.getLogger("syncopate.collector")

EVERY_S = 2.0
FULL_EVERY_S = 600.0
MAX_SHARE = 0.01           # at most 1 % of the process's time in either kind of sweep
BURST_S = 0.3              # the sweeps' budget holds at most this much CPU time (30 s of 1 %)
ENV = "SYNCOPATE_GC_EVERY_S"             # the sweep's period in the process's environment; 0: off
ENV_FULL = "SYNCOPATE_GC_FULL_EVERY_S"   # the full sweep's period
TRIM_EVERY_S = 60.0
TRIM_ENV = "SYNCOPATE_MALLOC_TRIM"       # 0: no malloc_trim after the sweeps


def _libc_trim() -> Callable[[], int] | None:
    """glibc's malloc_trim, or None where there is none (musl, macOS)."""
    # By glibc's soname, not ctypes.util.find_library("c"): that runs `ldconfig -p` in a child
    # process and reads its output, a blocking read on the event loop when a host or gateway starts
    # its collector (the test suite's blocking-call detector refused the host's start for it).
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: int(fn(0))


def trim_from_env(environ: dict | None = None) -> Callable[[], int] | None:
    raw = (os.environ if environ is None else environ).get(TRIM_ENV, "").strip()
    return None if raw == "0" else _libc_trim()


def sweep() -> int:
    """Collect what is not frozen, then freeze the survivors: the next sweep walks only what is
    allocated after this one."""
    found = gc.collect()
    gc.freeze()
    return found


def full_sweep() -> int:
    """Collect everything (the frozen objects too), then freeze the survivors."""
    gc.unfreeze()
    return sweep()


class CollectSchedule:
    """A sweep every `every_s` and a full sweep every `full_every_s`; after a full sweep that took d
    CPU seconds, no full one before d / max_share; sweeps spend a budget that fills at max_share up
    to `burst_s` (0: the same rule as the full sweeps'), and wait while it is overdrawn."""

    def __init__(self, every_s: float = EVERY_S, max_share: float = MAX_SHARE, *,
                 full_every_s: float = FULL_EVERY_S, burst_s: float = BURST_S,
                 clock: Callable[[], float] = time.monotonic, cpu: Callable[[], float] = time.thread_time,
                 collect: Callable[[], int] = sweep, collect_all: Callable[[], int] = full_sweep,
                 trim: Callable[[], int] | None = None, trim_every_s: float = TRIM_EVERY_S) -> None:
        if every_s <= 0 or not 0 < max_share <= 1:
            raise ValueError("every_s must be positive and max_share in (0, 1]")
        self.every_s, self.max_share = every_s, max_share
        self.full_every_s = max(every_s, full_every_s)
        # the budget is CPU time (this thread's): on shared, busy cores the wall-clock length of a
        # collection is mostly time spent waiting for a core (measured: 10-40x under a load of 70)
        self._clock, self._cpu, self._collect, self._collect_all = clock, cpu, collect, collect_all
        self._trim, self.trim_every_s = trim, trim_every_s
        self.trims = 0                 # malloc_trim calls that gave memory back (it answered 1)
        now = clock()
        self.burst_s = max(0.0, burst_s)
        self.balance_s = self.burst_s       # the sweeps' budget: CPU seconds they may still take
        self._filled_at = now
        self.next_trim_at = now + trim_every_s
        self.next_at = now + every_s
        self.next_full_at = now + self.full_every_s
        self.collections = 0           # sweeps of either kind
        self.full = 0                  # full sweeps
        self.freed = 0                 # unreachable objects found, in total
        self.last_s = 0.0              # CPU seconds the last one took
        self.last_full_s = 0.0
        self.total_s = 0.0

    def delay(self) -> float:
        """Seconds until the next sweep is due (0: due now)."""
        return max(0.0, min(self.next_at, self.next_full_at) - self._clock())

    def step(self) -> bool:
        """Sweep if due (a full sweep if that is due); True if it did."""
        now = self._clock()
        full = now >= self.next_full_at
        if not full and now < self.next_at:
            return False
        cpu0 = self._cpu()
        self.freed += (self._collect_all if full else self._collect)()
        if self._trim is not None and self._clock() >= self.next_trim_at:
            self.trims += self._trim()     # after the sweep: what it freed is in the arenas now
            self.next_trim_at = self._clock() + self.trim_every_s
        self.last_s = self._cpu() - cpu0
        self.total_s += self.last_s
        self.collections += 1
        now = self._clock()
        if full:
            self.full += 1
            self.last_full_s = self.last_s
            self.next_full_at = now + max(self.full_every_s, self.last_s / self.max_share)
        # either kind draws the sweeps' budget down (a full sweep walks everything)
        self.balance_s = min(self.burst_s, self.balance_s + (now - self._filled_at) * self.max_share) - self.last_s
        self._filled_at = now
        self.next_at = now + max(self.every_s, -self.balance_s / self.max_share)
        return True

    def stats(self) -> dict:
        return {"gc_scheduled": self.collections, "gc_scheduled_full": self.full,
                "gc_scheduled_freed": self.freed, "gc_scheduled_last_ms": round(self.last_s * 1000, 1),
                "gc_scheduled_last_full_ms": round(self.last_full_s * 1000, 1),
                "gc_scheduled_total_s": round(self.total_s, 3), "malloc_trims": self.trims}


def _period(env: dict, name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    every = float(raw) if raw else default
    if every < 0:
        raise ValueError(f"{name} must be 0 (off) or a period in seconds, not {raw!r}")
    return every


def from_env(environ: dict | None = None) -> CollectSchedule | None:
    """The schedule SYNCOPATE_GC_EVERY_S and SYNCOPATE_GC_FULL_EVERY_S ask for; None when the
    first is 0."""
    import os
    env = os.environ if environ is None else environ
    every = _period(env, ENV, EVERY_S)
    full = _period(env, ENV_FULL, FULL_EVERY_S)
    return CollectSchedule(every, full_every_s=full, trim=trim_from_env(env)) if every > 0 else None


def start(label: str) -> "tuple[CollectSchedule, asyncio.Task] | None":
    """Start the process's collector task on the running loop (None: turned off)."""
    schedule = from_env()
    if schedule is None:
        log.warning("%s: scheduled collections are off (%s=0)", label, ENV)
        return None
    return schedule, asyncio.get_running_loop().create_task(run(schedule), name=f"{label}-collector")


async def run(schedule: CollectSchedule) -> None:
    """The process's collector task (started by the Ray adapters once the process is ready). It runs
    on the event loop's thread: a sweep is one synchronous pause, never concurrent with a handler."""
    while True:
        await asyncio.sleep(schedule.delay())      # the schedule itself: nothing to wait on
        full = schedule.full
        schedule.step()
        if schedule.last_s > 0.05:
            log.warning("a scheduled %s took %.0f ms of CPU (next in %.0f s)",
                        "full sweep" if schedule.full > full else "sweep", schedule.last_s * 1000, schedule.delay())
