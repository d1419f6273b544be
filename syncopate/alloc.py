"""Give the C allocator's free memory back to the system, now and then (gateway and host processes).

Measured in a 200-user `simulate mixed` soak (docs/performance.md, "Soak"): the gateway's glibc
malloc held a steady amount in use (~26.7 MB) while the free memory it kept inside its arenas grew
by ~1 MB a minute: large Python objects (frames, JSON and msgpack payloads over 512 bytes), aiohttp's
C parts and Ray's threads allocate there, and glibc returns freed memory to the system only from the
top of an arena. That free memory counted in RSS as growth. `malloc_trim(0)` releases every free
page of every arena (madvise), so RSS follows what is in use again.

A daemon thread: the call holds each arena's lock for a moment, not the GIL (ctypes releases it),
so the event loop is not stopped. No-op where glibc's malloc_trim is not available.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading

log = logging.getLogger("syncopate.alloc")

TRIM_EVERY_S = 30.0


def _libc_trim():
    try:
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Trimmer:
    def __init__(self, every_s: float = TRIM_EVERY_S) -> None:
        self.every_s = every_s
        self._trim = _libc_trim()
        self.trims = 0
        self.released = 0          # bytes of RSS the trims gave back (as RSS measured it around them)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def trim_once(self) -> int:
        """One trim; the RSS it gave back (bytes, >= 0)."""
        if self._trim is None:
            return 0
        before = rss_bytes()
        self._trim(0)
        gave = max(0, before - rss_bytes())
        self.trims += 1
        self.released += gave
        return gave

    def _run(self) -> None:
        # the wait is the schedule (every `every_s`), not a stand-in for an event: nothing to wait on
        while not self._stop.wait(self.every_s):
            try:
                self.trim_once()
            except Exception:  # noqa: BLE001 - never take the server process down for this
                log.exception("malloc_trim failed")

    def start(self) -> "Trimmer":
        if self._trim is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


_process_trimmer: Trimmer | None = None


def start_trimming(every_s: float = TRIM_EVERY_S) -> Trimmer:
    """The process's trimmer (started once; later calls return it)."""
    global _process_trimmer
    if _process_trimmer is None:
        _process_trimmer = Trimmer(every_s).start()
    return _process_trimmer
