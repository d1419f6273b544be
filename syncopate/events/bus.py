"""The event bus: an append-only log of accepted listening events with consumer-group delivery.

Two implementations with one contract (Redis Streams semantics):

  publish(events)            append; durable (or, for Redis, in the server's memory) when it returns
  read(consumer, n, block)   up to n entries never delivered to the group (XREADGROUP ... >); each
                             becomes *pending* for `consumer` until acknowledged
  claim(consumer, idle, n)   pending entries whose consumer has held them for `idle` ms without
                             acknowledging (it crashed): handed to `consumer` (XAUTOCLAIM)
  ack(ids)                   done with these (XACK): only after the counts they changed committed
  pending()                  how many entries are delivered and not acknowledged
  backlog()                  how many entries were never delivered

`SQLiteLog` (the embedded default, a file beside the entity store) keeps the log, the group's
cursor and the pending list in three tables and does each call in one transaction. `RedisStreamLog`
(`--redis-url`) is one stream and one consumer group. Delivery is at least once on both: an entry
is delivered again after a crash before its ack, and an outbox re-send (the host died between the
append and its acknowledgement) appends an entry twice; the consumer applies an event once by its
key (syncopate/events/counts.py).

Redis here runs without persistence (storage/redis.py): an entry appended and not yet consumed
is lost if Redis restarts. The durable record is what the consumer committed; see docs/events.md.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack

from syncopate.events.sqlite_file import SQLiteFile, unavailable
from storage.redis import connect as redis_connect


@dataclass
class Delivery:
    id: str                      # the log's id of the entry (Redis stream id / SQLite row id)
    event: dict                  # ListeningEvent wire form
    deliveries: int = 1          # how many times it was handed out (1: first delivery)


def _pack(ev: dict) -> bytes:
    return msgpack.packb(ev, use_bin_type=True)


def _unpack(b: bytes) -> dict:
    return msgpack.unpackb(b, raw=False)


class SQLiteLog(SQLiteFile):
    name = "sqlite"
    thread_name = "event-log"
    POLL_S = 0.01                # the first look after one that found nothing
    POLL_MAX_S = 0.2             # looks back off to this while the log stays empty
    SCHEMA = [
        "CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL,"
        " at_ms INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS cursors (grp TEXT PRIMARY KEY, last_id INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS pending (grp TEXT NOT NULL, id INTEGER NOT NULL, consumer TEXT NOT NULL,"
        " since_ms INTEGER NOT NULL, deliveries INTEGER NOT NULL, PRIMARY KEY (grp, id))",
    ]

    def __init__(self, path: str | Path, group: str = "counts") -> None:
        super().__init__(path)
        self.group = group
        self._nudge: asyncio.Event | None = None     # a publish in this process wakes a blocked read
        self._poll_s = self.POLL_S                  # the wait before the next look (read, below)
        self.looks = 0                              # looks at the file (tests, diagnostics)

    def _create(self, db) -> None:
        for stmt in self.SCHEMA:
            db.execute(stmt)
        db.execute("INSERT OR IGNORE INTO cursors (grp, last_id) VALUES (?, 0)", (self.group,))

    async def publish(self, events: list[dict]) -> None:
        now = int(time.time() * 1000)
        rows = [(_pack(e), now) for e in events]
        def insert(db):
            for row in rows:
                db.execute("INSERT INTO log (data, at_ms) VALUES (?, ?)", row)
        await self._run(self._tx, insert)
        if self._nudge is not None:
            self._nudge.set()

    async def read(self, consumer: str, count: int, block_ms: int = 0) -> list[Delivery]:
        deadline = time.monotonic() + block_ms / 1000
        if self._nudge is None:
            self._nudge = asyncio.Event()
        while True:
            self._nudge.clear()
            out = await self._run(self._read_if_any, consumer, count)
            self.looks += 1
            if out:
                self._poll_s = self.POLL_S
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            # Woken at once by a publish of this process; publishers in other processes (the hosts)
            # are seen at the next look at the file. Each empty look doubles the wait before the
            # next, up to POLL_MAX_S; an entry found resets it. An idle log then costs ~5 looks a
            # second, not 100 (each a thread hop and two queries: measured ~0.1 ms of server CPU
            # per Yjs edit in W1, where no listening events flow), while a steady stream of entries
            # keeps the looks at POLL_S. The price: the first entry after an idle spell waits up to
            # POLL_MAX_S (pipeline lag, not any client's latency).
            wait = min(left, self._poll_s)
            self._poll_s = min(self._poll_s * 2, self.POLL_MAX_S)
            try:
                await asyncio.wait_for(self._nudge.wait(), wait)
            except asyncio.TimeoutError:
                pass

    def _read_if_any(self, consumer: str, count: int) -> list[Delivery]:
        # A look without the write lock first: an idle poll must not contend with the publishers.
        db = self._db
        (last,) = db.execute("SELECT last_id FROM cursors WHERE grp = ?", (self.group,)).fetchone()
        if db.execute("SELECT 1 FROM log WHERE id > ? LIMIT 1", (last,)).fetchone() is None:
            return []
        return self._tx(lambda db: self._read(db, consumer, count))

    def _read(self, db, consumer: str, count: int) -> list[Delivery]:
        (last,) = db.execute("SELECT last_id FROM cursors WHERE grp = ?", (self.group,)).fetchone()
        rows = db.execute("SELECT id, data FROM log WHERE id > ? ORDER BY id LIMIT ?", (last, count)).fetchall()
        if not rows:
            return []
        now = int(time.time() * 1000)
        db.executemany("INSERT INTO pending (grp, id, consumer, since_ms, deliveries) VALUES (?, ?, ?, ?, 1)",
                       [(self.group, i, consumer, now) for i, _ in rows])
        db.execute("UPDATE cursors SET last_id = ? WHERE grp = ?", (rows[-1][0], self.group))
        return [Delivery(str(i), _unpack(d)) for i, d in rows]

    async def claim(self, consumer: str, min_idle_ms: int, count: int) -> list[Delivery]:
        return await self._run(self._tx, lambda db: self._claim(db, consumer, min_idle_ms, count))

    def _claim(self, db, consumer: str, min_idle_ms: int, count: int) -> list[Delivery]:
        now = int(time.time() * 1000)
        rows = db.execute("SELECT p.id, p.deliveries, l.data FROM pending p JOIN log l ON l.id = p.id"
                          " WHERE p.grp = ? AND p.since_ms <= ? ORDER BY p.id LIMIT ?",
                          (self.group, now - min_idle_ms, count)).fetchall()
        db.executemany("UPDATE pending SET consumer = ?, since_ms = ?, deliveries = deliveries + 1"
                       " WHERE grp = ? AND id = ?", [(consumer, now, self.group, i) for i, _, _ in rows])
        return [Delivery(str(i), _unpack(d), n + 1) for i, n, d in rows]

    async def ack(self, ids: list[str]) -> None:
        rows = [(self.group, int(i)) for i in ids]
        await self._run(self._tx, lambda db: db.executemany("DELETE FROM pending WHERE grp = ? AND id = ?", rows))

    async def pending(self) -> int:
        return await self._run(lambda: self._db.execute("SELECT COUNT(*) FROM pending WHERE grp = ?",
                                                        (self.group,)).fetchone()[0])

    async def backlog(self) -> int:
        def q():
            (last,) = self._db.execute("SELECT last_id FROM cursors WHERE grp = ?", (self.group,)).fetchone()
            return self._db.execute("SELECT COUNT(*) FROM log WHERE id > ?", (last,)).fetchone()[0]
        return await self._run(q)

    # -- erasure (syncopate/events/erasure.py) ------------------------------------------------------
    async def tail(self) -> str | None:
        """The id of the last entry appended (None: the log is empty)."""
        (last,) = await self._run(lambda: self._db.execute("SELECT MAX(id) FROM log").fetchone())
        return None if last is None else str(last)

    async def committed_through(self, watermark: str) -> bool:
        """Whether the group has acknowledged every entry up to `watermark` (delivered and not pending)."""
        w = int(watermark)
        def q():
            (last,) = self._db.execute("SELECT last_id FROM cursors WHERE grp = ?", (self.group,)).fetchone()
            held = self._db.execute("SELECT 1 FROM pending WHERE grp = ? AND id <= ? LIMIT 1", (self.group, w)).fetchone()
            return last >= w and held is None
        return await self._run(q)

    async def forget_user(self, user_id: str, watermark: str) -> int:
        """Delete the user's entries up to `watermark` (all acknowledged: the caller waited for
        committed_through), then checkpoint and truncate the WAL. secure_delete (sqlite_file.py)
        zeroes the freed space. Answers how many entries were deleted."""
        w, needle = int(watermark), user_id.encode()

        def delete(db) -> int:
            # instr() finds the candidates in C; the unpacked user id decides (another id may contain it)
            ids = [(i,) for i, d in db.execute("SELECT id, data FROM log WHERE id <= ? AND instr(data, ?) > 0",
                                               (w, needle)) if _unpack(d).get("u") == user_id]
            db.executemany("DELETE FROM log WHERE id = ?", ids)
            return len(ids)
        n = await self._run(self._tx, delete)
        await self._run(self._truncate_wal)
        return n


class RedisStreamLog:
    name = "redis"

    def __init__(self, url: str, stream: str = "syncopate:events", group: str = "counts") -> None:
        self.url, self.stream, self.group = url, stream, group
        self._r = None

    async def start(self) -> None:
        from redis.exceptions import ResponseError
        self._r = redis_connect(self.url)       # no transparent retries; driver info resolved once
        try:
            await self._r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):       # the group exists: keep its cursor
                raise

    async def close(self) -> None:
        if self._r is not None:
            await self._r.aclose()
            self._r = None

    async def _call(self, coro):
        from redis.exceptions import RedisError
        try:
            return await coro
        except RedisError as exc:
            raise unavailable(self.name, exc) from exc

    async def publish(self, events: list[dict]) -> None:
        pipe = self._r.pipeline(transaction=True)     # MULTI/EXEC: the batch is appended whole or not at all
        for e in events:
            pipe.xadd(self.stream, {"e": _pack(e)})
        await self._call(pipe.execute())

    @staticmethod
    def _deliveries(entries, counts: dict | None = None) -> list[Delivery]:
        out = []
        for sid, fields in entries:
            if fields is None or b"e" not in fields:       # deleted from the stream meanwhile
                continue
            sid = sid.decode() if isinstance(sid, bytes) else sid
            out.append(Delivery(sid, _unpack(fields[b"e"]), (counts or {}).get(sid, 1)))
        return out

    async def read(self, consumer: str, count: int, block_ms: int = 0) -> list[Delivery]:
        res = await self._call(self._r.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count,
                                                  block=block_ms or None))
        if not res:
            return []
        return self._deliveries(res[0][1])

    async def claim(self, consumer: str, min_idle_ms: int, count: int) -> list[Delivery]:
        res = await self._call(self._r.xautoclaim(self.stream, self.group, consumer, min_idle_ms, "0-0", count=count))
        entries = res[1]
        if not entries:
            return []
        ids = [e[0] for e in entries]
        info = await self._call(self._r.xpending_range(self.stream, self.group, min=ids[0], max=ids[-1],
                                                       count=len(ids) + 16, consumername=consumer))
        counts = {(i["message_id"].decode() if isinstance(i["message_id"], bytes) else i["message_id"]):
                  i["times_delivered"] for i in info}
        return self._deliveries(entries, counts)

    async def ack(self, ids: list[str]) -> None:
        if ids:
            await self._call(self._r.xack(self.stream, self.group, *ids))

    async def pending(self) -> int:
        info = await self._call(self._r.xpending(self.stream, self.group))
        return int(info["pending"])

    async def backlog(self) -> int:
        groups = await self._call(self._r.xinfo_groups(self.stream))
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == self.group:
                lag = g.get("lag")
                return int(lag) if lag is not None else 0
        return 0

    # -- erasure (syncopate/events/erasure.py) ------------------------------------------------------
    async def tail(self) -> str | None:
        info = await self._call(self._r.xinfo_stream(self.stream))     # start() made the stream (MKSTREAM)
        last = info["last-generated-id"]
        last = last.decode() if isinstance(last, bytes) else last
        return None if last == "0-0" else last

    async def committed_through(self, watermark: str) -> bool:
        groups = await self._call(self._r.xinfo_groups(self.stream))
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == self.group:
                last = g["last-delivered-id"]
                last = last.decode() if isinstance(last, bytes) else last
                if _sid(last) < _sid(watermark):
                    return False
                held = await self._call(self._r.xpending_range(self.stream, self.group, min="-", max=watermark, count=1))
                return not held
        return False

    async def forget_user(self, user_id: str, watermark: str) -> int:
        """Every entry up to `watermark` leaves the stream for good (the stream is rebuilt without
        them: syncopate/events/stream_rebuild.py explains why XDEL is not enough). Answers how many."""
        from syncopate.events.stream_rebuild import REBUILD
        return int(await self._call(self._r.eval(REBUILD, 2, self.stream, f"{self.stream}:rebuild",
                                                 watermark, self.group)))


def _sid(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


def make_log(data_dir: str, redis_url: str | None = None, prefix: str = "syncopate_"):
    """The bus `serve` runs: Redis Streams with --redis-url, else the embedded SQLite log."""
    if redis_url:
        return RedisStreamLog(redis_url, stream=f"{prefix}events")
    return SQLiteLog(Path(data_dir) / "events.db")
