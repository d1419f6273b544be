"""SQLite with several writers on one file: the cross-process writer lock, and the WAL's bound.

Every host of a single-machine deployment appends to the one syncopate.db (storage/sqlite_writer.py).
"""
from __future__ import annotations

import asyncio
import os
import threading
import time

from storage.base import Append, Record
from storage.sqlite import SQLiteStore


def _blocked_flock_waiters(path: str) -> int:
    """Blocked flock(2) waiters on `path`, as /proc/locks lists them ("->" lines)."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return sum(1 for line in f if "->" in line and "FLOCK" in line and line.split()[6].endswith(f":{ino}"))


def _wait_for(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_a_writer_waits_in_the_kernel_for_another_connections_transaction(tmp_path):
    """Store B's group commit blocks on the writer lock while store A's write transaction is open,
    and goes on once A commits (before the lock, B slept in SQLite's busy handler instead)."""
    path = tmp_path / "syncopate.db"
    a, b = SQLiteStore(path), SQLiteStore(path)
    a._open()
    b._open()
    try:
        epoch = b._acquire("session:u1", None)
        done: list = []
        with a._wlock.held():
            a._db.execute("BEGIN IMMEDIATE")
            a._db.execute("INSERT INTO meta VALUES ('held-by', 'a')")
            t = threading.Thread(target=lambda: done.append(b._append([Append("session:u1", epoch, [Record(1, b"x")])])))
            t.start()
            _wait_for(lambda: _blocked_flock_waiters(str(path) + "-writer") == 1, "B to block on the writer lock")
            assert not done                       # B has not committed under A's open transaction
            a._db.execute("COMMIT")
        t.join(timeout=30)
        assert done == [[None]]
        assert b.timing()["writer_waits"] == 1
        assert [r.seq for r in b._load("session:u1").records] == [1]
    finally:
        a._db.close()
        b._db.close()
        a._wlock.close()
        b._wlock.close()


def test_the_checkpointer_keeps_the_wal_bounded_under_continuous_appends(tmp_path):
    """Group commits back to back, with no pause for a checkpoint to catch up: the WAL file stays
    near the checkpointer's bound instead of growing with everything written."""
    path = tmp_path / "syncopate.db"

    async def main() -> tuple[int, int]:
        st = SQLiteStore(path)
        st.checkpoint_every_s = 0.02
        st.wal_bound_pages = 256                   # 1 MiB of 4 KiB pages
        await st.start()
        try:
            epoch = await st.acquire("session:u1")
            written, seq, peak = 0, 0, 0
            payload = os.urandom(2000)
            while written < 24 << 20 or st.timing()["checkpoints"] < 20:
                recs = [Record(seq + i + 1, payload) for i in range(16)]
                seq += 16
                assert await st.append([Append("session:u1", epoch, recs)]) == [None]
                written += 16 * len(payload)
                peak = max(peak, os.path.getsize(str(path) + "-wal"))
            return written, peak
        finally:
            await st.close()

    written, peak = asyncio.run(main())
    assert peak < 8 << 20, f"the WAL reached {peak} bytes for {written} written"
