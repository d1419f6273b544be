"""An opt-in stall recorder for a server or load-generator process: what pauses its event loop.

    SYNCOPATE_STALLS=DIR [SYNCOPATE_STALLS_MS=5] syncopate serve ...   (or a simulation)

A median latency of a millisecond with a p99 of tens says the path is fast and something stops a
process now and then. With SYNCOPATE_STALLS set, each gateway and host process (and a benchmark's
load generator, simulations/bench_library_push.py --stalls) records:
- every garbage collection (gc.callbacks): its generation and duration, counted per generation; the
  ones of at least SYNCOPATE_STALLS_MS are stall events;
- the event loop's lag: a TICK_S timer's overshoot; an overshoot of at least the threshold is a stall
  event, with the loop thread's CPU time in that window (CPU close to the overshoot: the loop was
  running something long; far below it: the process waited for a core, or for the GIL another thread
  held — the process's CPU in the window tells which) and the stack the watchdog saw;
- a watchdog thread that, while the loop's heartbeat is older than the threshold, samples the loop
  thread's stack (sys._current_frames): what a long callback was doing.
Events go to DIR/stalls-<label>-<pid>.jsonl as they happen (written by the watchdog thread, never the
loop), each stamped with time.monotonic() — CLOCK_MONOTONIC, one clock for every process of the
machine — so they can be laid beside a benchmark's slow samples (the benchmark's perf_counter is the
same clock on Linux). Recorder.stats() gives the counts, which SYNCOPATE_MEMSTATS lines carry.

Off by default: the callbacks and the watchdog cost a little CPU (a 2 ms poll per process that takes
the GIL, a 5 ms timer on the loop).
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("syncopate.stalls")

ENV_DIR = "SYNCOPATE_STALLS"
ENV_MS = "SYNCOPATE_STALLS_MS"
DEFAULT_MS = 5.0
TICK_S = 0.005            # the lag probe's timer
POLL_S = 0.002            # the watchdog's poll (each one takes the GIL: not too often)


@dataclass
class StallEvent:
    kind: str               # "gc" or "lag"
    t: float                # time.monotonic() when it began
    ms: float               # how long (wall)
    cpu_ms: float | None = None        # this thread's CPU in it (gc: the collecting thread; lag: the loop's)
    proc_cpu_ms: float | None = None   # the whole process's CPU in that window (lag)
    gen: int | None = None             # the generation collected (gc)
    collected: int | None = None       # unreachable objects found (gc)
    stack: list[str] | None = None     # what the loop thread was running (lag, from the watchdog)


@dataclass
class GenStats:
    count: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0


@dataclass
class Recorder:
    label: str
    threshold_ms: float = DEFAULT_MS
    out: Path | None = None
    gens: list[GenStats] = field(default_factory=lambda: [GenStats() for _ in range(3)])
    lag_stalls: int = 0
    lag_max_ms: float = 0.0
    events: deque = field(default_factory=lambda: deque(maxlen=10_000))   # not yet written

    def __post_init__(self) -> None:
        self._gc_t0 = self._gc_cpu0 = 0.0
        self._beat = time.monotonic()
        self._loop_thread: int | None = None
        self._stack: list[str] | None = None      # the watchdog's sample of the current stall
        self._stop = threading.Event()
        self._task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    # -- garbage collections -----------------------------------------------------------------------
    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_t0, self._gc_cpu0 = time.monotonic(), time.thread_time()
            return
        ms = (time.monotonic() - self._gc_t0) * 1000
        cpu = (time.thread_time() - self._gc_cpu0) * 1000
        g = self.gens[info["generation"]]
        g.count += 1
        g.total_ms += ms
        g.max_ms = max(g.max_ms, ms)
        if ms >= self.threshold_ms:
            # no wake-up here: inside the collector, take no lock; the watchdog's poll finds it
            self.events.append(StallEvent("gc", self._gc_t0, round(ms, 2), cpu_ms=round(cpu, 2),
                                          gen=info["generation"], collected=info.get("collected")))

    # -- the loop's lag ----------------------------------------------------------------------------
    async def _probe(self) -> None:
        self._loop_thread = threading.get_ident()
        while True:
            t, cpu, pcpu = time.monotonic(), time.thread_time(), time.process_time()
            self._beat = t
            self._stack = None
            await asyncio.sleep(TICK_S)        # the probe's clock: its overshoot is the measurement
            now = time.monotonic()
            self._beat = now
            lag = (now - t - TICK_S) * 1000
            if lag >= self.threshold_ms:
                self.lag_stalls += 1
                self.lag_max_ms = max(self.lag_max_ms, lag)
                self.events.append(StallEvent("lag", t + TICK_S, round(lag, 2),
                                              cpu_ms=round((time.thread_time() - cpu) * 1000, 2),
                                              proc_cpu_ms=round((time.process_time() - pcpu) * 1000, 2),
                                              stack=self._stack))
                self._wake.set()

    def _watch(self) -> None:
        """The watchdog thread: samples the loop thread's stack once per stall, writes the events
        (all file I/O is here, off the loop)."""
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        while not self._stop.is_set():
            self._wake.wait(POLL_S)
            self._wake.clear()
            if (self._stack is None and self._loop_thread is not None
                    and (time.monotonic() - self._beat - TICK_S) * 1000 >= self.threshold_ms):
                # the beat is also set when the probe goes to sleep for TICK_S: a stall is an
                # overshoot of that sleep by the threshold, as _probe measures it
                frame = sys._current_frames().get(self._loop_thread)
                if frame is not None:
                    self._stack = [f"{fs.filename.rsplit('/', 2)[-1]}:{fs.lineno} {fs.name}"
                                   for fs in traceback.extract_stack(frame, limit=12)]
                del frame
            if self.events and self.out is not None:
                self.flush()
        if self.out is not None:
            self.flush()

    def flush(self) -> None:
        lines = []
        while self.events:
            lines.append(json.dumps({"label": self.label, "pid": os.getpid(),
                                     **{k: v for k, v in asdict(self.events.popleft()).items() if v is not None}}))
        if lines and self.out is not None:
            with self.out.open("a") as f:
                f.write("\n".join(lines) + "\n")

    # -- lifetime ----------------------------------------------------------------------------------
    def start(self) -> "Recorder":
        """On the running loop's thread."""
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._probe(), name=f"{self.label}-stalls")
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
        self._stop.set()
        self._wake.set()                     # the watchdog writes what is left, then ends (join())

    def join(self, timeout: float = 5.0) -> None:
        """Block until the watchdog has written every event (after stop(); off the loop)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict:
        return {"stall_gc": [[g.count, round(g.total_ms, 1), round(g.max_ms, 1)] for g in self.gens],
                "stall_lag_count": self.lag_stalls, "stall_lag_max_ms": round(self.lag_max_ms, 1)}


_CURRENT: Recorder | None = None


def current() -> Recorder | None:
    return _CURRENT


def maybe_start(label: str, environ: dict | None = None) -> Recorder | None:
    """Start the recorder in this process (on its running loop) when SYNCOPATE_STALLS is set."""
    global _CURRENT
    env = os.environ if environ is None else environ
    where = env.get(ENV_DIR, "").strip()
    if not where:
        return None
    raw = env.get(ENV_MS, "").strip()
    ms = float(raw) if raw else DEFAULT_MS
    if ms <= 0:
        raise ValueError(f"{ENV_MS} must be a positive number of milliseconds, not {raw!r}")
    out = Path(where) / f"stalls-{label}-{os.getpid()}.jsonl"
    _CURRENT = Recorder(label, ms, out).start()
    log.warning("%s: stall recorder on (>= %.1f ms) -> %s", label, ms, out)
    return _CURRENT


def load(stalls_dir: str) -> list[dict]:
    """Every event of a SYNCOPATE_STALLS directory."""
    out = []
    for p in sorted(Path(stalls_dir).glob("stalls-*.jsonl")):
        out += [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return out
