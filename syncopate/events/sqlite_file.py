"""One SQLite file of the event pipeline: the embedded log (syncopate/events/bus.py SQLiteLog) and
the counts (syncopate/events/counts.py SQLiteCounts) each hold one.

One connection, used from one worker thread: calls run in the order they were made and the event
loop never blocks on SQLite. WAL with synchronous=FULL, so a committed transaction survives a
crash. An sqlite3 error becomes STORE_UNAVAILABLE (retryable), naming the part that failed.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from protocols.errors import ErrorCode, SyncopateError


def unavailable(name: str, exc: Exception) -> SyncopateError:
    return SyncopateError(ErrorCode.STORE_UNAVAILABLE, f"event log {name}: {type(exc).__name__}: {exc}")


def transaction(db: sqlite3.Connection, fn):
    """fn(db) in one IMMEDIATE transaction: committed if it returns, rolled back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        out = fn(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return out


class SQLiteFile:
    """Subclasses name the file's part (`name`, for errors; `thread_name`) and create their tables
    in `_create(db)`, which runs in one transaction when the file is opened."""
    name = "sqlite"
    thread_name = "event-sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except sqlite3.Error as exc:
            raise unavailable(self.name, exc) from exc

    async def start(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=False)

    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA busy_timeout=30000")
        for _ in range(100):
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:        # another process is switching the new file
                time.sleep(0.05)
        db.execute("PRAGMA synchronous=FULL")
        # a user's erasure deletes rows (docs/data-rights.md): freed space is zeroed, not left in free pages
        db.execute("PRAGMA secure_delete=ON")
        transaction(db, self._create)
        self._db = db

    def _create(self, db: sqlite3.Connection) -> None:
        raise NotImplementedError

    def _tx(self, fn):
        return transaction(self._db, fn)

    def _truncate_wal(self) -> None:
        """After an erasure: the WAL still holds the pages as they were before it. Checkpoint them
        into the (zeroed) file and truncate it; a reader in another process that holds old frames
        makes it busy, which is retryable (the erasure runs again)."""
        busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise SyncopateError(ErrorCode.STORE_UNAVAILABLE, f"event log {self.name}: the WAL is in use; retry")
