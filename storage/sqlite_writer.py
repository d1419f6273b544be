"""The write lock between the processes that share one SQLite file: a kernel lock, not SQLite's sleeps.

Every host of a single-machine deployment opens its own connection to the one `syncopate.db`, and
SQLite admits one writer at a time. A connection that finds the write lock taken does not wait on
it: its busy handler *sleeps* and tries again, 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms
(sqliteDefaultBusyCallback), however soon the other writer finishes. Two hosts group-committing
back to back collide on most commits, so an ack's latency got those sleeps: a BEGIN IMMEDIATE that
lost two or three races waited 8-18 ms for a lock held well under 1 ms after it was last tried.

Here every write transaction of SQLiteStore first takes an exclusive flock(2) on `PATH-writer`
(beside the database; the file holds nothing) and holds it until its COMMIT or ROLLBACK returned.
A waiter blocks in the kernel and is woken when the holder unlocks: the next writer starts as soon
as the lock is free. SQLite's own lock is then free when BEGIN IMMEDIATE runs (every writer of the
file takes this lock first), and its busy timeout stays as the fallback for anything that does not
(the sqlite3 shell, an older build).

flock locks belong to an open file description: each connection opens the file itself, so two
connections of one process exclude each other too (the background checkpointer's TRUNCATE). The
kernel drops the lock when its process dies, however it dies. There is no deadline on the wait: the
holder is a write transaction of another connection, which holds SQLite's write lock as well, so
while it hangs no writer could commit anyway (with the busy timeout alone they would fail after
30 s instead of waiting).
"""
from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager


class WriterLock:
    """An exclusive flock on `db_path + "-writer"`, taken around one write transaction (see the module doc)."""

    def __init__(self, db_path: str) -> None:
        self.path = db_path + "-writer"
        self._fd: int | None = None
        self.waits = 0                   # acquisitions that found the lock held
        self.wait_s = 0.0                # time spent waiting for it

    def open(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)              # releases the lock if it were held

    def acquire(self) -> int:
        """Take the lock; the answer is the descriptor to hand to `release`. (The store's writes call
        these two directly: a @contextmanager's generator around every group commit was 1.5 % of a
        host's CPU in W2.)"""
        fd = self._fd
        if fd is None:
            raise RuntimeError(f"{self.path}: the writer lock is not open")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)       # uncontended: one syscall
        except BlockingIOError:
            t0 = time.perf_counter()
            fcntl.flock(fd, fcntl.LOCK_EX)       # blocks in the kernel (the GIL released) until it is free
            self.waits += 1
            self.wait_s += time.perf_counter() - t0
        return fd

    @staticmethod
    def release(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def held(self) -> Iterator[None]:
        fd = self.acquire()
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
