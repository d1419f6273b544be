"""SQLite: the embedded default (`make serve` with no flags), one file under the data dir.

Each host process opens its own connection; WAL mode lets readers run beside the one writer and
`synchronous=FULL` makes COMMIT wait for fsync, so a committed append is durable. The blocking
sqlite3 calls run on one dedicated thread per store: the event loop never waits on the disk.
"""
from __future__ import annotations

import asyncio
import functools
import os
import queue
import sqlite3
import threading
import time
import weakref
from pathlib import Path

from storage.base import Append, Dropped, LeaseHeld, Loaded, Membership, Record, Snapshot, Store, stale, unavailable
from storage.sqlite_writer import WriterLock

SCHEMA_VERSION = 2
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS owners (key TEXT PRIMARY KEY, epoch INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS records (key TEXT NOT NULL, seq INTEGER NOT NULL, epoch INTEGER NOT NULL,"
    " data BLOB NOT NULL, PRIMARY KEY (key, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS snapshots (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, epoch INTEGER NOT NULL,"
    " data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS leases (holder TEXT PRIMARY KEY, until REAL NOT NULL, revoked INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS membership (name TEXT PRIMARY KEY, epoch INTEGER NOT NULL, members TEXT NOT NULL)",
]
# Upgrades from version v to v + 1 (after SCHEMA, which only creates what is missing).
MIGRATIONS = {1: ["ALTER TABLE owners ADD COLUMN holder TEXT"]}


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _settle(fut: asyncio.Future, res, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is None:
        fut.set_result(res)
    else:
        fut.set_exception(exc)


_live_threads: weakref.WeakSet = weakref.WeakSet()


def _at_exit() -> None:
    # as concurrent.futures does: at the interpreter's exit (before it joins the non-daemon threads)
    # each store thread finishes what it was handed, then ends
    for t in list(_live_threads):
        t._queue.put(None)


threading._register_atexit(_at_exit)


def _work(get) -> None:
    """The store thread's loop (a function of the queue alone, not of the _StoreThread: as an
    executor's worker, it ends once the store is dropped)."""
    while True:
        item = get()
        if item is None:
            return
        loop, fut, fn, args = item
        del item
        if fut.cancelled():
            continue
        res = exc = None
        try:
            res = fn(*args)
        except BaseException as e:  # noqa: BLE001 - as the executor did: whatever it raised, the awaiter gets
            exc = e
        try:
            loop.call_soon_threadsafe(_settle, fut, res, exc)
        except RuntimeError:              # the loop is closed: nobody awaits it any more
            pass
        del loop, fut, fn, args, res, exc


class _StoreThread:
    """The store's one thread: the calls run in the order they were handed over, and each answer
    goes back to the loop in one call_soon_threadsafe. It was a ThreadPoolExecutor behind
    loop.run_in_executor: per call a concurrent Future, a work item, the executor's locks and the
    chain back to an asyncio Future; a no-op call's round trip measured 142-163 us of CPU that way
    and 67-77 us this way (this 2-core machine, loaded), once per group commit. A call whose awaiter
    was cancelled before the thread reached it is not run (as run_in_executor's chain cancels it)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._shutdown = False

    def call(self, loop: asyncio.AbstractEventLoop, fn, args: tuple) -> asyncio.Future:
        if self._shutdown:
            raise RuntimeError("cannot schedule new calls after shutdown")
        if self._thread is None:
            self._thread = threading.Thread(target=_work, args=(self._queue.get,), name=self._name)
            self._thread.start()
            _live_threads.add(self)
            weakref.finalize(self, self._queue.put, None).atexit = False    # dropped unclosed: the thread ends
        fut = loop.create_future()
        self._queue.put((loop, fut, fn, args))
        return fut

    def shutdown(self, wait: bool = True) -> None:
        if not self._shutdown:
            self._shutdown = True
            self._queue.put(None)
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


def _exclusive(fn):
    """A thread-side method that writes: run under the cross-process writer lock (storage/sqlite_writer.py)."""
    @functools.wraps(fn)           # keeps __name__: sqlite_process calls the methods by name
    def run(self, *args):
        lock = self._wlock
        fd = lock.acquire()          # (not `with lock.held()`: see WriterLock.acquire)
        try:
            return fn(self, *args)
        finally:
            lock.release(fd)
    return run


class SQLiteStore(Store):
    name = "sqlite"
    durable = True
    checkpoint_every_s = 1.0          # the background checkpointer's period
    wal_bound_pages = 16384           # the WAL's bound (64 MiB of 4 KiB pages): see _checkpoint_loop

    def __init__(self, path: str | Path, *, secure_delete: bool = True) -> None:
        self.path = str(path)
        self.secure_delete = secure_delete       # off only to measure what it costs (simulations.bench_store)
        self._pool = _StoreThread("sqlite-store")
        self._db: sqlite3.Connection | None = None
        self._wlock = WriterLock(self.path)
        # Measured on the store's thread (timing()): the appends, the COMMITs among them (the fsync),
        # and how many COMMITs took over 10 ms. Against the host's own commit durations (the loop's
        # view: queueing for the thread and the GIL hand-offs included) they split the store's work
        # from the waits around it.
        self._timing = {"appends": 0, "append_s": 0.0, "commit_s": 0.0, "commits_over_10ms": 0,
                        "checkpoints": 0, "checkpoint_s": 0.0, "checkpoints_locked": 0}

    async def _run(self, fn, *args):
        try:
            return await self._pool.call(asyncio.get_running_loop(), fn, args)
        except sqlite3.Error as exc:
            raise unavailable(self.name, exc) from exc

    # -- thread side ------------------------------------------------------------------------
    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._wlock.open()
        with self._wlock.held():      # hosts starting together on a new file take turns
            self._open_locked()

    def _open_locked(self) -> None:
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
        # When the WAL restarts from its beginning it is cut back to the bound (a burst left it larger).
        db.execute(f"PRAGMA journal_size_limit={self.wal_bound_pages * 4096}")
        # Deleted content is overwritten with zeros, not left in free pages: an erased user's bytes
        # (and a compacted log's) must not stay readable in the file (docs/data-rights.md).
        db.execute(f"PRAGMA secure_delete={'ON' if self.secure_delete else 'OFF'}")
        db.execute("BEGIN IMMEDIATE")
        for stmt in SCHEMA:
            db.execute(stmt)
        row = db.execute("SELECT v FROM meta WHERE k='schema_version'").fetchone()
        version = 1 if row is None else int(row[0])     # a new file has version 1's tables now
        if version > SCHEMA_VERSION:
            db.execute("ROLLBACK")
            raise sqlite3.DatabaseError(f"{self.path}: schema {row[0]} is newer than this code ({SCHEMA_VERSION})")
        for v in range(version, SCHEMA_VERSION):
            for stmt in MIGRATIONS[v]:
                db.execute(stmt)
        db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                   (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
        self._db = db

    @_exclusive
    def _acquire(self, key: str, holder: str | None) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")      # the write lock: no renewal or other acquire interleaves
        try:
            if holder is not None:
                cur = db.execute("SELECT o.holder FROM owners o JOIN leases l ON l.holder = o.holder"
                                 " WHERE o.key = ? AND o.holder != ? AND l.until > ?",
                                 (key, holder, time.time())).fetchone()
                if cur is not None:
                    raise LeaseHeld(key, cur[0])
            # a key with no owners row starts above the epoch floor (erase(): storage.base)
            row = db.execute("INSERT INTO owners(key, epoch, holder) VALUES (?, 1 + coalesce((SELECT CAST(v AS INTEGER)"
                             " FROM meta WHERE k='epoch_floor'), 0), ?) ON CONFLICT(key) DO UPDATE"
                             " SET epoch = epoch + 1, holder = excluded.holder RETURNING epoch", (key, holder)).fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return row[0]

    @_exclusive
    def _write(self, sql: str, args: tuple) -> int:
        """One statement in its own write transaction; the rows it changed."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            n = db.execute(sql, args).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return n

    def _open_lease(self, holder: str, lease_s: float) -> bool:
        return self._write("INSERT INTO leases(holder, until, revoked) VALUES (?, ?, 0) ON CONFLICT(holder)"
                           " DO UPDATE SET until = excluded.until WHERE revoked = 0",
                           (holder, time.time() + lease_s)) == 1

    def _renew_lease(self, holder: str, lease_s: float) -> bool:
        now = time.time()
        return self._write("UPDATE leases SET until = ? WHERE holder = ? AND revoked = 0 AND until > ?",
                           (now + lease_s, holder, now)) == 1

    def _membership(self, name: str) -> Membership:
        # One statement (one read snapshot): the row, or else the floor its sweep left (storage.base)
        row = self._db.execute("SELECT coalesce(m.epoch, f.floor), coalesce(m.members, '[]') FROM (SELECT coalesce("
                               "(SELECT CAST(v AS INTEGER) FROM meta WHERE k = 'view_floor'), 0) AS floor) f"
                               " LEFT JOIN membership m ON m.name = ?", (name,)).fetchone()
        return Membership.from_row(*row)

    def _view_floor(self) -> int:
        """The epoch of a view that has no row (storage.base: drop_dead); read in the caller's transaction."""
        row = self._db.execute("SELECT CAST(v AS INTEGER) FROM meta WHERE k = 'view_floor'").fetchone()
        return row[0] if row else 0

    @_exclusive
    def _drop_dead(self, older_than_s: float) -> Dropped:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            leases = db.execute("DELETE FROM leases WHERE until < ?", (time.time() - older_than_s,)).rowcount
            kept = {r[0] for r in db.execute("SELECT holder FROM leases")}
            dead = [(name, epoch) for name, epoch, members
                    in db.execute("SELECT name, epoch, members FROM membership").fetchall()
                    if (held := set(Membership.from_row(0, members).members.values())) and not held & kept]
            views = [name for name, _ in dead]
            db.executemany("DELETE FROM membership WHERE name = ?", [(n,) for n in views])
            if dead:      # a re-created view starts above every swept one (storage.base)
                db.execute("INSERT INTO meta(k, v) VALUES ('view_floor', ?) ON CONFLICT(k) DO UPDATE"
                           " SET v = CAST(max(CAST(v AS INTEGER), CAST(excluded.v AS INTEGER)) AS TEXT)",
                           (str(1 + max(e for _, e in dead)),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return Dropped(leases, len(views))

    @_exclusive
    def _change_membership(self, name: str, expected: int, members: str) -> Membership | None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT epoch FROM membership WHERE name = ?", (name,)).fetchone()
            if (row[0] if row else self._view_floor()) != expected:
                db.execute("ROLLBACK")
                return None
            db.execute("INSERT INTO membership(name, epoch, members) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE"
                       " SET epoch = excluded.epoch, members = excluded.members", (name, expected + 1, members))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return Membership.from_row(expected + 1, members)

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

    @_exclusive
    def _append(self, batch: list[Append]) -> list:
        t0 = time.perf_counter()
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
            t1 = time.perf_counter()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        t2 = time.perf_counter()
        tm = self._timing
        tm["appends"] += 1
        tm["append_s"] += t2 - t0
        tm["commit_s"] += t2 - t1
        if t2 - t1 > 0.010:
            tm["commits_over_10ms"] += 1
        return out

    @_exclusive
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

    @_exclusive
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
        self._truncate_wal()
        return True

    @_exclusive
    def _purge(self) -> None:
        self._truncate_wal()

    def _truncate_wal(self) -> None:
        # (under the writer lock: a TRUNCATE checkpoint waits for, then blocks, every writer)
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

    def _checkpoint_loop(self) -> None:
        """Checkpoints off the commit path, and the WAL kept bounded.

        A PASSIVE checkpoint never blocks a writer, but it only copies the frames that were in the
        WAL when it started; the WAL goes back to its start (and is cut to journal_size_limit) only
        when a writer finds every frame copied. Under group commits back to back some commit always
        lands while a checkpoint runs, so PASSIVE alone let the WAL grow with everything written
        (tests/test_sqlite_writers.py). Over `wal_bound_pages`, the rest is copied under the writer
        lock: the writers wait for one short checkpoint of what was written since the unlocked
        one began, and the next commit restarts the WAL (cut back to the bound: journal_size_limit)."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        writer = WriterLock(self.path)          # its own open file: excludes this process's store thread too
        writer.open()
        every_s, bound, tm = self.checkpoint_every_s, self.wal_bound_pages, self._timing
        try:
            while not self._stop.wait(every_s):
                try:
                    t0 = time.perf_counter()
                    # fetchall: the statement runs to its end (an unfinished one keeps a read lock that stops
                    # the WAL from restarting)
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    # Over the bound (the file's size: the checkpoint's "all frames copied" is of the
                    # frames it saw, and commits since may have added more), copy the rest with
                    # the writers held off; the next commit then restarts the WAL.
                    if _size(self.path + "-wal") > bound * 4096:
                        with writer.held():
                            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                        tm["checkpoints_locked"] += 1
                    tm["checkpoints"] += 1
                    tm["checkpoint_s"] += time.perf_counter() - t0
                except sqlite3.Error:
                    pass
        finally:
            db.close()
            writer.close()

    async def close(self) -> None:
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._wlock.close()
        self._pool.shutdown(wait=False)

    def timing(self) -> dict:
        return {**self._timing, "writer_waits": self._wlock.waits, "writer_wait_s": self._wlock.wait_s}

    async def acquire(self, key: str, holder: str | None = None) -> int:
        return await self._run(self._acquire, key, holder)

    async def release(self, key: str, epoch: int, holder: str) -> bool:
        return await self._run(self._write, "UPDATE owners SET holder = NULL WHERE key = ? AND epoch = ? AND holder = ?",
                               (key, epoch, holder)) == 1

    async def open_lease(self, holder: str, lease_s: float) -> bool:
        return await self._run(self._open_lease, holder, lease_s)

    async def renew_lease(self, holder: str, lease_s: float) -> bool:
        return await self._run(self._renew_lease, holder, lease_s)

    async def revoke_lease(self, holder: str) -> None:
        await self._run(self._write, "UPDATE leases SET revoked = 1 WHERE holder = ?", (holder,))

    async def membership(self, name: str) -> Membership:
        return await self._run(self._membership, name)

    async def change_membership(self, name: str, expected_epoch: int, members: dict[int, str]) -> Membership | None:
        return await self._run(self._change_membership, name, expected_epoch, Membership(0, members).to_json())

    async def drop_dead(self, older_than_s: float) -> Dropped:
        return await self._run(self._drop_dead, float(older_than_s))

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
