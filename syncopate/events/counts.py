"""The pipeline's durable store: every applied listening event, the plays counted, and the per-track,
per-day stream counts (SQLite `<data-dir>/eventcounts.db` by default, PostgreSQL with
`--postgres-dsn`). The consumer (syncopate/events/consumer.py) calls `apply` with a batch of
deliveries: ONE transaction inserts each event by its key (a redelivered or re-published event is a
no-op), marks its play counted when it is the play's first stream, and adds one to the count of
(track, day) only then. The marker and the count commit together, so a crash before the commit
changes nothing and a crash after it (before the ack) finds the markers on redelivery.

Tables (prefix p, default `syncopate_`):
  {p}ev_events   key (user/event id@start) unique, every field of the event, seq (arrival order)
  {p}ev_counted  play_id primary key: the plays counted as streams, with user, track, day, when
  {p}ev_counts   (track_uri, day) -> streams

`reconcile()` recounts the streams from {p}ev_events (distinct plays with a stream event, on the
day of their start) and compares every (track, day) with {p}ev_counts. Recently played reads
{p}ev_counted (the user's counted plays outside private sessions, newest first).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.listening import ListeningEvent
from syncopate.events.anonymise import (COUNTED_SET, EVENT_SET, Forgotten, Pseudonyms, counted_updates,
                                        event_updates, placeholders)
from syncopate.events.sqlite_file import SQLiteFile, unavailable


@dataclass
class Applied:
    events: int = 0              # new events recorded
    streams: int = 0             # plays counted
    duplicates: int = 0          # events already recorded (redelivery, re-publish)


@dataclass
class Reconciled:
    keys: int                    # (track, day) pairs compared
    streams: int                 # streams recounted from the record
    differences: list = field(default_factory=list)   # [{track_uri, day, counted, recounted}]

    def to_dict(self) -> dict:
        return {"keys": self.keys, "streams": self.streams, "differences": self.differences}


def _row(ev: ListeningEvent) -> tuple:
    return (ev.key, ev.user_id, ev.play_id, ev.track_uri, ev.day, ev.played_at_ms, ev.ms_played, int(ev.stream),
            int(ev.private), ev.product, ev.market, ev.context_uri, ev.device_id, ev.received_ms, ev.source)


_EV_COLS = ("key, user_id, play_id, track_uri, day, played_at_ms, ms_played, stream, private, product, market,"
            " context_uri, device_id, received_ms, source")


def _chunks(xs: list, n: int):
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


def _new_streams(events: list[ListeningEvent], new_keys: set) -> list[tuple]:
    """The ev_counted rows of the streams among the newly recorded events (one per play)."""
    out, seen = [], set()
    for ev in events:
        if ev.stream and ev.key in new_keys and ev.play_id not in seen:
            seen.add(ev.play_id)
            out.append((ev.play_id, ev.user_id, ev.track_uri, ev.day, ev.played_at_ms + ev.ms_played,
                        ev.context_uri, int(ev.private)))
    return out


def _tally(rows) -> dict:
    out: dict = {}
    for uri, day in rows:
        out[(uri, day)] = out.get((uri, day), 0) + 1
    return out


def _recent_page(rows: list, limit: int, direction: str, total: int) -> dict:
    more = len(rows) > limit
    rows = rows[:limit]
    if direction == "after":
        rows.reverse()                   # fetched oldest first (right after the cursor); answer newest first
    return {"plays": [{"uri": u, "played_at_ms": at, "context_uri": c} for at, u, c in rows], "limit": limit,
            "more": bool(rows) and more, "direction": direction, "total": total}


class SQLiteCounts(SQLiteFile):
    name = "sqlite"
    thread_name = "event-counts"

    def __init__(self, path: str | Path, prefix: str = "syncopate_") -> None:
        super().__init__(path)
        self.p = prefix

    def _create(self, db) -> None:
        p = self.p
        db.execute(f"CREATE TABLE IF NOT EXISTS {p}ev_events (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                   " key TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL, play_id TEXT NOT NULL, track_uri TEXT NOT NULL,"
                   " day TEXT NOT NULL, played_at_ms INTEGER NOT NULL, ms_played INTEGER NOT NULL,"
                   " stream INTEGER NOT NULL, private INTEGER NOT NULL, product TEXT, market TEXT, context_uri TEXT,"
                   " device_id TEXT, received_ms INTEGER NOT NULL, source TEXT)")
        db.execute(f"CREATE TABLE IF NOT EXISTS {p}ev_counted (play_id TEXT PRIMARY KEY, user_id TEXT NOT NULL,"
                   " track_uri TEXT NOT NULL, day TEXT NOT NULL, played_at_ms INTEGER NOT NULL, context_uri TEXT,"
                   " private INTEGER NOT NULL)")
        db.execute(f"CREATE INDEX IF NOT EXISTS {p}ev_counted_user ON {p}ev_counted (user_id, played_at_ms)")
        db.execute(f"CREATE TABLE IF NOT EXISTS {p}ev_counts (track_uri TEXT NOT NULL, day TEXT NOT NULL,"
                   " streams INTEGER NOT NULL, PRIMARY KEY (track_uri, day))")

    # -- the consumer's one transaction ---------------------------------------------------------
    async def apply(self, events: list[ListeningEvent], before_commit=None) -> Applied:
        return await self._run(self._apply, events, before_commit)

    def _apply(self, events: list[ListeningEvent], before_commit) -> Applied:
        return self._tx(lambda db: self._apply_in(db, events, before_commit))

    def _apply_in(self, db, events: list[ListeningEvent], before_commit) -> Applied:
        p = self.p
        out = Applied()
        # Three statements for the whole batch: the events new by key (a row whose key is
        # already there, or earlier in the same batch, is skipped), the plays new by play id
        # among their streams, and one increment per (track, day) of those.
        for part in _chunks(events, 500):
            rows = [_row(ev) for ev in part]
            new = {r[0] for r in db.execute(
                f"INSERT INTO {p}ev_events ({_EV_COLS}) VALUES {','.join(['(' + ','.join('?' * 15) + ')'] * len(rows))}"
                " ON CONFLICT (key) DO NOTHING RETURNING key", [v for r in rows for v in r]).fetchall()}
            out.events += len(new)
            out.duplicates += len(part) - len(new)
            plays = _new_streams(part, new)
            if plays:
                counted = db.execute(
                    f"INSERT INTO {p}ev_counted VALUES {','.join(['(?, ?, ?, ?, ?, ?, ?)'] * len(plays))}"
                    " ON CONFLICT (play_id) DO NOTHING RETURNING track_uri, day", [v for r in plays for v in r]).fetchall()
                out.streams += len(counted)
                for (uri, day), n in _tally(counted).items():
                    db.execute(f"INSERT INTO {p}ev_counts VALUES (?, ?, ?) ON CONFLICT (track_uri, day)"
                               " DO UPDATE SET streams = streams + excluded.streams", (uri, day, n))
        if before_commit is not None:
            before_commit()            # fault injection (tests): a crash with the transaction open
        return out

    # -- reads ----------------------------------------------------------------------------------------
    async def stream_counts(self, uris: list[str] | None = None, day_from: str | None = None,
                            day_to: str | None = None) -> dict[str, dict[str, int]]:
        def q():
            sql, args = f"SELECT track_uri, day, streams FROM {self.p}ev_counts WHERE 1=1", []
            if uris is not None:
                sql += f" AND track_uri IN ({','.join('?' * len(uris))})"
                args += uris
            if day_from:
                sql += " AND day >= ?"
                args.append(day_from)
            if day_to:
                sql += " AND day <= ?"
                args.append(day_to)
            return self._db.execute(sql + " ORDER BY track_uri, day", args).fetchall()
        out: dict[str, dict[str, int]] = {}
        for uri, day, n in await self._run(q):
            out.setdefault(uri, {})[day] = n
        return out

    async def recently_played(self, user_id: str, limit: int = 20, before: int | None = None,
                              after: int | None = None) -> dict:
        def q():
            base = f"SELECT played_at_ms, track_uri, context_uri FROM {self.p}ev_counted WHERE user_id = ? AND private = 0"
            total = self._db.execute(f"SELECT COUNT(*) FROM {self.p}ev_counted WHERE user_id = ? AND private = 0",
                                     (user_id,)).fetchone()[0]
            if after is not None:
                rows = self._db.execute(base + " AND played_at_ms > ? ORDER BY played_at_ms LIMIT ?",
                                        (user_id, after, limit + 1)).fetchall()
                return rows, "after", total
            if before is not None:
                rows = self._db.execute(base + " AND played_at_ms < ? ORDER BY played_at_ms DESC LIMIT ?",
                                        (user_id, before, limit + 1)).fetchall()
            else:
                rows = self._db.execute(base + " ORDER BY played_at_ms DESC LIMIT ?", (user_id, limit + 1)).fetchall()
            return rows, "before", total
        rows, direction, total = await self._run(q)
        return _recent_page(list(rows), limit, direction, total)

    async def reconcile(self) -> Reconciled:
        def q():
            p = self.p
            rec = self._db.execute(f"SELECT track_uri, day, COUNT(DISTINCT play_id) FROM {p}ev_events WHERE stream = 1"
                                   " GROUP BY track_uri, day").fetchall()
            cnt = self._db.execute(f"SELECT track_uri, day, streams FROM {p}ev_counts").fetchall()
            return rec, cnt
        rec, cnt = await self._run(q)
        return _compare(rec, cnt)

    async def event_count(self) -> int:
        return await self._run(lambda: self._db.execute(f"SELECT COUNT(*) FROM {self.p}ev_events").fetchone()[0])

    # -- a user's erasure (syncopate/events/anonymise.py) ----------------------------------------------
    async def forget_user(self, user_id: str, anonymous_id: str) -> Forgotten:
        """Call only once the consumer has applied every event of the user (erasure.py waits for it)."""
        return await self._run(self._forget, user_id, anonymous_id)

    def _forget(self, user_id: str, anonymous_id: str) -> Forgotten:
        p, ps = self.p, Pseudonyms(anonymous_id)

        def tx(db) -> Forgotten:
            out = Forgotten()
            out.deleted = db.execute(f"DELETE FROM {p}ev_events WHERE user_id = ? AND stream = 0", (user_id,)).rowcount
            rows = db.execute(f"SELECT seq, key, play_id, day FROM {p}ev_events WHERE user_id = ?", (user_id,)).fetchall()
            db.executemany(f"UPDATE {p}ev_events SET " + placeholders(EVENT_SET, "?"), event_updates(ps, rows))
            plays = db.execute(f"SELECT play_id, day FROM {p}ev_counted WHERE user_id = ?", (user_id,)).fetchall()
            db.executemany(f"UPDATE {p}ev_counted SET " + placeholders(COUNTED_SET, "?"), counted_updates(ps, plays))
            out.anonymised, out.plays = len(rows), len(plays)
            return out
        out = self._tx(tx)
        self._truncate_wal()             # the old rows' page images are in the WAL until then
        return out


def _compare(recounted: list, counted: list) -> Reconciled:
    a = {(t, d): n for t, d, n in recounted}
    b = {(t, d): n for t, d, n in counted}
    diffs = [{"track_uri": t, "day": d, "counted": b.get((t, d), 0), "recounted": a.get((t, d), 0)}
             for (t, d) in sorted(set(a) | set(b)) if a.get((t, d), 0) != b.get((t, d), 0)]
    return Reconciled(len(set(a) | set(b)), sum(a.values()), diffs)


class PostgresCounts:
    """The same tables and the same transaction on PostgreSQL (asyncpg)."""
    name = "postgres"

    def __init__(self, dsn: str, prefix: str = "syncopate_") -> None:
        self.dsn, self.p = dsn, prefix
        self._pool: Any = None

    async def start(self) -> None:
        import asyncpg

        from storage.postgres import loopback_without_sslmode, pgpass_password
        password = await asyncio.to_thread(pgpass_password, self.dsn)     # file I/O: off the loop
        extra: dict = {} if password is None else {"password": password}
        if loopback_without_sslmode(self.dsn):
            extra["ssl"] = False
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, **extra)
        p = self.p
        async with self._pool.acquire() as c:
            async with c.transaction():
                await c.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{p}ev_schema")
                await c.execute(f"CREATE TABLE IF NOT EXISTS {p}ev_events (seq BIGSERIAL PRIMARY KEY,"
                                " key TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL, play_id TEXT NOT NULL,"
                                " track_uri TEXT NOT NULL, day TEXT NOT NULL, played_at_ms BIGINT NOT NULL,"
                                " ms_played BIGINT NOT NULL, stream INT NOT NULL, private INT NOT NULL, product TEXT,"
                                " market TEXT, context_uri TEXT, device_id TEXT, received_ms BIGINT NOT NULL, source TEXT)")
                await c.execute(f"CREATE TABLE IF NOT EXISTS {p}ev_counted (play_id TEXT PRIMARY KEY,"
                                " user_id TEXT NOT NULL, track_uri TEXT NOT NULL, day TEXT NOT NULL,"
                                " played_at_ms BIGINT NOT NULL, context_uri TEXT, private INT NOT NULL)")
                await c.execute(f"CREATE INDEX IF NOT EXISTS {p}ev_counted_user ON {p}ev_counted (user_id, played_at_ms)")
                await c.execute(f"CREATE TABLE IF NOT EXISTS {p}ev_counts (track_uri TEXT NOT NULL, day TEXT NOT NULL,"
                                " streams BIGINT NOT NULL, PRIMARY KEY (track_uri, day))")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _do(self, fn):
        import asyncpg
        try:
            async with self._pool.acquire() as c:
                return await fn(c)
        except (asyncpg.PostgresError, OSError) as exc:
            raise unavailable(self.name, exc) from exc

    async def apply(self, events: list[ListeningEvent], before_commit=None) -> Applied:
        p = self.p

        def values(n_rows: int, width: int) -> str:
            return ",".join("(" + ",".join(f"${r * width + i + 1}" for i in range(width)) + ")" for r in range(n_rows))

        async def run(c):
            out = Applied()
            async with c.transaction():
                # the same three statements per batch as on SQLite
                for part in _chunks(events, 500):
                    rows = [_row(ev) for ev in part]
                    new = {r[0] for r in await c.fetch(
                        f"INSERT INTO {p}ev_events ({_EV_COLS}) VALUES {values(len(rows), 15)}"
                        " ON CONFLICT (key) DO NOTHING RETURNING key", *[v for r in rows for v in r])}
                    out.events += len(new)
                    out.duplicates += len(part) - len(new)
                    plays = _new_streams(part, new)
                    if plays:
                        counted = await c.fetch(f"INSERT INTO {p}ev_counted VALUES {values(len(plays), 7)}"
                                                " ON CONFLICT (play_id) DO NOTHING RETURNING track_uri, day",
                                                *[v for r in plays for v in r])
                        out.streams += len(counted)
                        tally = _tally((r[0], r[1]) for r in counted)
                        await c.executemany(f"INSERT INTO {p}ev_counts VALUES ($1, $2, $3) ON CONFLICT (track_uri, day)"
                                            f" DO UPDATE SET streams = {p}ev_counts.streams + excluded.streams",
                                            [(u, d, n) for (u, d), n in tally.items()])
                if before_commit is not None:
                    before_commit()
            return out
        return await self._do(run)

    async def stream_counts(self, uris: list[str] | None = None, day_from: str | None = None,
                            day_to: str | None = None) -> dict[str, dict[str, int]]:
        async def q(c):
            return await c.fetch(f"SELECT track_uri, day, streams FROM {self.p}ev_counts WHERE"
                                 " ($1::text[] IS NULL OR track_uri = ANY($1)) AND ($2::text IS NULL OR day >= $2)"
                                 " AND ($3::text IS NULL OR day <= $3) ORDER BY track_uri, day", uris, day_from, day_to)
        out: dict[str, dict[str, int]] = {}
        for r in await self._do(q):
            out.setdefault(r[0], {})[r[1]] = r[2]
        return out

    async def recently_played(self, user_id: str, limit: int = 20, before: int | None = None,
                              after: int | None = None) -> dict:
        base = f"SELECT played_at_ms, track_uri, context_uri FROM {self.p}ev_counted WHERE user_id = $1 AND private = 0"

        async def q(c):
            total = await c.fetchval(f"SELECT COUNT(*) FROM {self.p}ev_counted WHERE user_id = $1 AND private = 0", user_id)
            if after is not None:
                rows = await c.fetch(base + " AND played_at_ms > $2 ORDER BY played_at_ms LIMIT $3", user_id, after, limit + 1)
                return rows, "after", total
            if before is not None:
                rows = await c.fetch(base + " AND played_at_ms < $2 ORDER BY played_at_ms DESC LIMIT $3",
                                     user_id, before, limit + 1)
            else:
                rows = await c.fetch(base + " ORDER BY played_at_ms DESC LIMIT $2", user_id, limit + 1)
            return rows, "before", total
        rows, direction, total = await self._do(q)
        return _recent_page([tuple(r) for r in rows], limit, direction, total)

    async def reconcile(self) -> Reconciled:
        async def q(c):
            rec = await c.fetch(f"SELECT track_uri, day, COUNT(DISTINCT play_id) FROM {self.p}ev_events WHERE stream = 1"
                                " GROUP BY track_uri, day")
            cnt = await c.fetch(f"SELECT track_uri, day, streams FROM {self.p}ev_counts")
            return [tuple(r) for r in rec], [tuple(r) for r in cnt]
        rec, cnt = await self._do(q)
        return _compare(rec, cnt)

    async def event_count(self) -> int:
        return await self._do(lambda c: c.fetchval(f"SELECT COUNT(*) FROM {self.p}ev_events"))

    async def forget_user(self, user_id: str, anonymous_id: str) -> Forgotten:
        """As SQLiteCounts.forget_user. The old row versions stay in the table files as dead tuples
        until VACUUM reuses their space, and in the WAL (docs/data-rights.md, "Bytes on disk")."""
        p, ps = self.p, Pseudonyms(anonymous_id)

        async def run(c) -> Forgotten:
            out = Forgotten()
            async with c.transaction():
                done = await c.execute(f"DELETE FROM {p}ev_events WHERE user_id = $1 AND stream = 0", user_id)
                out.deleted = int(done.rpartition(" ")[2])
                rows = await c.fetch(f"SELECT seq, key, play_id, day FROM {p}ev_events WHERE user_id = $1", user_id)
                await c.executemany(f"UPDATE {p}ev_events SET " + placeholders(EVENT_SET, "$"),
                                    event_updates(ps, [tuple(r) for r in rows]))
                plays = await c.fetch(f"SELECT play_id, day FROM {p}ev_counted WHERE user_id = $1", user_id)
                await c.executemany(f"UPDATE {p}ev_counted SET " + placeholders(COUNTED_SET, "$"),
                                    counted_updates(ps, [tuple(r) for r in plays]))
                out.anonymised, out.plays = len(rows), len(plays)
            return out
        return await self._do(run)


def make_counts(data_dir: str, postgres_dsn: str | None = None, prefix: str = "syncopate_"):
    if postgres_dsn:
        return PostgresCounts(postgres_dsn, prefix=prefix)
    return SQLiteCounts(Path(data_dir) / "eventcounts.db", prefix=prefix)
