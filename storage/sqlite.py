"""SQLite: the embedded default (`make serve` with no flags), one file under the data dir.

Each host process opens its own connection; WAL mode lets readers run beside the one writer and
`synchronous=FULL` makes COMMIT wait for fsync, so a committed append is durable. The blocking
sqlite3 calls run on one dedicated thread per store: the event loop never waits on the disk.
"""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from storage.base import Append, Loaded, Record, Snapshot, Store, stale, unavailable

SCHEMA_VERSION = 1
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS owners (key TEXT PRIMARY KEY, epoch INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS records (key TEXT NOT NULL, seq INTEGER NOT NULL, epoch INTEGER NOT NULL,"
    " data BLOB NOT NULL, PRIMARY KEY (key, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS snapshots (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, epoch INTEGER NOT NULL,"
    " data BLOB NOT NULL)",
]


class SQLiteStore(Store):
    name = "sqlite"
    durable = True

    def __init__(self, path: str | Path, *, secure_delete: bool = True) -> None:
        self.path = str(path)
        self.secure_delete = secure_delete       # off only to measure what it costs (simulations.bench_store)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn, *args):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except sqlite3.Error as exc:
            raise unavailable(self.name, exc) from exc

    # -- thread side ------------------------------------------------------------------------
    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        # Switching a fresh file to WAL needs a moment alone with it and doesn't wait on the busy
        # timeout: hosts starting together on a new data dir would see "database is locked".
        deadline = time.monotonic() + 30
        while db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            try:
                db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)          # on the store's own thread, never the event loop
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        # No checkpoint inside a commit (the default runs one every 1,000 pages, in whichever
        # commit crosses the mark: a tail-latency spike on the ack path). A background thread
        # with its own connection checkpoints instead (start()).
        db.execute("PRAGMA wal_autocheckpoint=0")
        # Deleted content is overwritten with zeros, not left in free pages: an erased user's bytes
        # (and a compacted log's) must not stay readable in the file (docs/data-rights.md).
        db.execute(f"PRAGMA secure_delete={'ON' if self.secure_delete else 'OFF'}")
        db.execute("BEGIN IMMEDIATE")
        for stmt in SCHEMA:
            db.execute(stmt)
        row = db.execute("SELECT v FROM meta WHERE k='schema_version'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            db.execute("ROLLBACK")
            raise sqlite3.DatabaseError(f"{self.path}: schema {row[0]} is newer than this code ({SCHEMA_VERSION})")
        db.execute("COMMIT")
        self._db = db

    def _acquire(self, key: str) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # a key with no owners row starts above the epoch floor (erase(): storage.base)
            row = db.execute("INSERT INTO owners(key, epoch) VALUES (?, 1 + coalesce((SELECT CAST(v AS INTEGER)"
                             " FROM meta WHERE k='epoch_floor'), 0)) ON CONFLICT(key) DO UPDATE"
                             " SET epoch = epoch + 1 RETURNING epoch", (key,)).fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return row[0]

    def _load(self, key: str) -> Loaded:
        db = self._db
        db.execute("BEGIN")      # one read snapshot for both queries
        try:
            row = db.execute("SELECT seq, data FROM snapshots WHERE key=?", (key,)).fetchone()
            snap = Snapshot(row[0], row[1]) if row else None
            rows = db.execute("SELECT seq, data FROM records WHERE key=? AND seq>? ORDER BY seq",
                              (key, snap.seq if snap else 0)).fetchall()
        finally:
            db.execute("COMMIT")
        return Loaded(snap, [Record(s, d) for s, d in rows])

    def _append(self, batch: list[Append]) -> list:
        db = self._db
        db.execute("BEGIN IMMEDIATE")   # the write lock: no acquire() can interleave with the check
        try:
            out: list = []
            rows = []
            keys = list({item.key for item in batch})
            epochs: dict[str, int | None] = {}
            for i in range(0, len(keys), 500):          # one query per 500 keys, not one per key
                chunk = keys[i:i + 500]
                epochs.update(db.execute(f"SELECT key, epoch FROM owners WHERE key IN ({','.join('?' * len(chunk))})",
                                         chunk).fetchall())
            for item in batch:
                cur = epochs.get(item.key)
                if cur != item.epoch:
                    out.append(stale(item.key, item.epoch, cur))
                    continue
                rows.extend((item.key, r.seq, item.epoch, r.data) for r in item.records)
                out.append(None)
            db.executemany("INSERT INTO records(key, seq, epoch, data) VALUES (?,?,?,?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return out

    def _write_snapshot(self, key: str, epoch: int, snap: Snapshot) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            r = db.execute("SELECT epoch FROM owners WHERE key=?", (key,)).fetchone()
            if (r[0] if r else None) != epoch:
                raise stale(key, epoch, r[0] if r else None)
            db.execute("INSERT INTO snapshots(key, seq, epoch, data) VALUES (?,?,?,?) ON CONFLICT(key) DO UPDATE"
                       " SET seq=excluded.seq, epoch=excluded.epoch, data=excluded.data WHERE excluded.seq > snapshots.seq",
                       (key, snap.seq, epoch, snap.data))
            db.execute("DELETE FROM records WHERE key=? AND seq<=?", (key, snap.seq))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _erase(self, key: str, epoch: int) -> bool:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            r = db.execute("SELECT epoch FROM owners WHERE key=?", (key,)).fetchone()
            if r is None:
                db.execute("COMMIT")
                return False
            if r[0] != epoch:
                raise stale(key, epoch, r[0])
            db.execute("DELETE FROM records WHERE key=?", (key,))
            db.execute("DELETE FROM snapshots WHERE key=?", (key,))
            db.execute("DELETE FROM owners WHERE key=?", (key,))
            db.execute("INSERT INTO meta(k, v) VALUES ('epoch_floor', ?) ON CONFLICT(k) DO UPDATE"
                       " SET v = CAST(max(CAST(v AS INTEGER), CAST(excluded.v AS INTEGER)) AS TEXT)", (str(epoch),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._purge()
        return True

    def _purge(self) -> None:
        # The WAL still holds the pages as they were before a delete: checkpoint them into the
        # (zeroed) file and truncate it. Best effort: a reader in another process can keep old
        # frames alive until its next checkpoint (docs/data-rights.md).
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            pass

    # -- loop side --------------------------------------------------------------------------
    async def start(self) -> None:
        await self._run(self._open)
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="sqlite-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint_loop(self, every_s: float = 1.0) -> None:
        """PASSIVE checkpoints never block writers; TRUNCATE when the WAL grew large keeps it bounded."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            while not self._stop.wait(every_s):
                try:
                    busy, wal_pages, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if wal_pages > 50_000 and done == wal_pages:
                        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
        finally:
            db.close()

    async def close(self) -> None:
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=False)

    async def acquire(self, key: str) -> int:
        return await self._run(self._acquire, key)

    async def load(self, key: str) -> Loaded:
        return await self._run(self._load, key)

    async def append(self, batch: list[Append]) -> list:
        return await self._run(self._append, batch)

    async def write_snapshot(self, key: str, epoch: int, snapshot: Snapshot) -> None:
        await self._run(self._write_snapshot, key, epoch, snapshot)

    async def erase(self, key: str, epoch: int) -> bool:
        return await self._run(self._erase, key, epoch)

    async def purge(self) -> None:
        await self._run(self._purge)

    async def ping(self) -> bool:
        return await self._run(lambda: self._db.execute("SELECT 1").fetchone()[0] == 1)
