"""One contract suite over every store backend, against the real Redis and PostgreSQL servers.

A backend whose server is unreachable FAILS here (start() raises STORE_UNAVAILABLE); nothing skips.
Every test gets its own table prefix / key prefix / SQLite file and removes them afterwards.
Servers: SYNCOPATE_TEST_POSTGRES and SYNCOPATE_TEST_REDIS (as in conftest.py), defaulting to the local ones.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import uuid

import pytest

from protocols.errors import ErrorCode, SyncopateError
from storage.base import Append, Loaded, Record, Snapshot, Store
from storage.factory import make_store
from storage.memory import MemoryStore
from storage.postgres import PostgresStore
from storage.redis import RedisStore, connect
from storage.sqlite import SQLiteStore
from storage.sqlite_process import SQLiteProcessStore
from storage.tiered import TieredStore
from tests.support.store_bytes import postgres_bytes, redis_bytes, sqlite_bytes

PG_DSN = os.environ.get("SYNCOPATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SYNCOPATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
BACKENDS = ["memory", "sqlite", "sqlite-process", "postgres", "redis", "tiered"]


class Env:
    """Opens store instances of one backend over the same underlying data ("hosts")."""

    def __init__(self, kind: str, tmp_path) -> None:
        self.kind = kind
        self.prefix = f"t{uuid.uuid4().hex[:16]}_"
        self.path = tmp_path / "syncopate.db"
        self.opened: list[Store] = []
        self._memory = MemoryStore()     # the in-process fake: "hosts" share the one instance
        self._admin: PostgresStore | None = None

    async def admin(self) -> PostgresStore:
        """A PostgresStore on this prefix for inspection and cleanup (its pool, not a bare
        asyncpg.connect(), which reads ~/.pgpass inside the event loop)."""
        if self._admin is None:
            self._admin = PostgresStore(PG_DSN, prefix=self.prefix, max_size=2)
            await self._admin.start()
        return self._admin

    def new(self) -> Store:
        if self.kind == "memory":
            return self._memory
        if self.kind == "sqlite":
            return SQLiteStore(self.path)
        if self.kind == "sqlite-process":
            return SQLiteProcessStore(self.path)
        if self.kind == "postgres":
            return PostgresStore(PG_DSN, prefix=self.prefix)
        if self.kind == "redis":
            return RedisStore(REDIS_URL, prefix=self.prefix)
        return TieredStore(PostgresStore(PG_DSN, prefix=self.prefix), RedisStore(REDIS_URL, prefix=self.prefix))

    async def open(self) -> Store:
        store = self.new()
        self.opened.append(store)
        await store.start()
        return store

    async def record_rows(self, key: str) -> int:
        """Records physically stored for `key` (compaction must delete, not just hide)."""
        if self.kind == "memory":
            return self._memory.record_count(key)
        if self.kind in ("sqlite", "sqlite-process"):
            def count() -> int:
                with sqlite3.connect(self.path) as db:
                    return db.execute("SELECT count(*) FROM records WHERE key = ?", (key,)).fetchone()[0]
            return await asyncio.to_thread(count)
        if self.kind == "redis":
            return await self.opened[0].client.zcard(f"{self.prefix}r:{key}")
        async with (await self.admin())._pool.acquire() as conn:
            return await conn.fetchval(f"SELECT count(*) FROM {self.prefix}records WHERE key = $1", key)

    async def raw_bytes(self) -> bytes:
        """Every byte this backend holds for the test, read beside the store (a scan for erased
        data): the SQLite file and its WAL, every PostgreSQL row of the prefix, every Redis key of
        the prefix with its value, the memory fake's dicts."""
        if self.kind == "memory":
            m = self._memory
            parts = [k.encode() for k in m.keys()]
            parts += [r.data for log in m._records.values() for r in log]
            parts += [sn.data for sn in m._snapshots.values()]
            return b"|".join(parts)
        if self.kind in ("sqlite", "sqlite-process"):
            return await sqlite_bytes(self.path)
        out = b""
        if self.kind in ("postgres", "tiered"):
            out += await postgres_bytes(await self.admin(), self.prefix)
        if self.kind in ("redis", "tiered"):
            r = RedisStore(REDIS_URL, prefix=self.prefix)
            try:
                out += await redis_bytes(r.client, self.prefix)
            finally:
                await r.close()
        return out

    async def flush_cache(self) -> None:
        r = RedisStore(REDIS_URL, prefix=self.prefix)
        await r.drop()
        await r.close()

    async def cleanup(self) -> None:
        for store in self.opened:
            with contextlib.suppress(SyncopateError, OSError):
                await store.close()
        if self.kind in ("postgres", "tiered"):
            pg = await self.admin()
            await pg.drop()
            await pg.close()
        if self.kind in ("redis", "tiered"):
            r = RedisStore(REDIS_URL, prefix=self.prefix)
            await r.drop()
            await r.close()


@pytest.fixture(params=BACKENDS)
async def env(request, tmp_path):
    e = Env(request.param, tmp_path)
    try:
        yield e
    finally:
        await e.cleanup()


def recs(*seqs: int, tag: bytes = b"r") -> list[Record]:
    return [Record(s, tag + str(s).encode()) for s in seqs]


def codes(results) -> list:
    return [None if r is None else r.code for r in results]


# -- the contract -----------------------------------------------------------------------------
async def test_acquire_hands_out_increasing_epochs(env):
    s = await env.open()
    epochs = [await s.acquire("a") for _ in range(5)]
    assert epochs == sorted(set(epochs)) and epochs[0] >= 1
    assert await s.acquire("b") >= 1


async def test_append_load_round_trip(env):
    s = await env.open()
    e = await s.acquire("pl:1")
    assert await s.append([Append("pl:1", e, recs(1, 2, 3))]) == [None]
    assert await s.append([Append("pl:1", e, [Record(4, b"\x00\xff binary")])]) == [None]
    got = await s.load("pl:1")
    assert got.snapshot is None
    assert got.records == recs(1, 2, 3) + [Record(4, b"\x00\xff binary")]
    assert got.last_seq == 4


async def test_group_commit_many_keys_in_one_call(env):
    s = await env.open()
    keys = [f"k{i}" for i in range(200)]
    epochs = {k: await s.acquire(k) for k in keys}
    batch = [Append(k, epochs[k], recs(1, 2, tag=k.encode())) for k in keys]
    batch += [Append(k, epochs[k], recs(3, tag=k.encode())) for k in keys[:10]]   # a key twice in a batch
    before = getattr(getattr(s, "pg", s), "commits", None)
    assert await s.append(batch) == [None] * len(batch)
    if before is not None:
        assert getattr(s, "pg", s).commits == before + 1
    for k in keys:
        want = recs(1, 2, 3, tag=k.encode()) if k in keys[:10] else recs(1, 2, tag=k.encode())
        assert (await s.load(k)).records == want


async def test_stale_item_refused_while_the_others_commit(env):
    s = await env.open()
    ea, eb = await s.acquire("a"), await s.acquire("b")
    eb2 = await s.acquire("b")          # "b" moved on: eb is stale now
    out = await s.append([Append("a", ea, recs(1)), Append("b", eb, recs(1, 2)),
                          Append("never", 1, recs(1)), Append("b", eb2, recs(1, tag=b"new"))])
    assert codes(out) == [None, ErrorCode.STALE_EPOCH, ErrorCode.STALE_EPOCH, None]
    assert (await s.load("a")).records == recs(1)
    assert (await s.load("b")).records == recs(1, tag=b"new")      # nothing of the stale item
    assert await s.load("never") == Loaded(None, [])


async def test_stale_snapshot_refused(env):
    s = await env.open()
    e1 = await s.acquire("a")
    await s.append([Append("a", e1, recs(1, 2))])
    await s.acquire("a")
    with pytest.raises(SyncopateError) as err:
        await s.write_snapshot("a", e1, Snapshot(2, b"stale"))
    assert err.value.code is ErrorCode.STALE_EPOCH
    with pytest.raises(SyncopateError):
        await s.write_snapshot("never", 1, Snapshot(1, b"x"))
    assert await s.load("a") == Loaded(None, recs(1, 2))
    assert await env.record_rows("a") == 2


async def test_snapshot_compacts_the_log(env):
    s = await env.open()
    e = await s.acquire("a")
    await s.append([Append("a", e, recs(1, 2, 3, 4, 5))])
    await s.write_snapshot("a", e, Snapshot(3, b"state@3"))
    assert await s.load("a") == Loaded(Snapshot(3, b"state@3"), recs(4, 5))
    assert await env.record_rows("a") == 2
    await s.append([Append("a", e, recs(6))])
    await s.write_snapshot("a", e, Snapshot(6, b"state@6"))
    assert await s.load("a") == Loaded(Snapshot(6, b"state@6"), [])
    assert await env.record_rows("a") == 0


async def test_older_snapshot_ignored(env):
    s = await env.open()
    e = await s.acquire("a")
    await s.append([Append("a", e, recs(1, 2, 3, 4))])
    await s.write_snapshot("a", e, Snapshot(3, b"new"))
    await s.write_snapshot("a", e, Snapshot(2, b"old"))
    await s.write_snapshot("a", e, Snapshot(3, b"same seq"))
    assert await s.load("a") == Loaded(Snapshot(3, b"new"), recs(4))


async def test_durable_across_close_and_reopen(env):
    s = await env.open()
    e = await s.acquire("a")
    await s.append([Append("a", e, recs(1, 2, 3))])
    await s.write_snapshot("a", e, Snapshot(2, b"s2"))
    await s.append([Append("a", e, recs(4))])
    await s.close()
    s2 = await env.open()
    assert await s2.load("a") == Loaded(Snapshot(2, b"s2"), recs(3, 4))
    e2 = await s2.acquire("a")
    assert e2 > e
    assert await s2.append([Append("a", e2, recs(5))]) == [None]


async def test_two_hosts_fencing(env):
    a, b = await env.open(), await env.open()
    ea = await a.acquire("pl")
    assert await a.append([Append("pl", ea, recs(1, 2))]) == [None]
    eb = await b.acquire("pl")
    assert eb > ea
    assert codes(await a.append([Append("pl", ea, recs(3, tag=b"A"))])) == [ErrorCode.STALE_EPOCH]
    with pytest.raises(SyncopateError):
        await a.write_snapshot("pl", ea, Snapshot(2, b"A"))
    assert await b.load("pl") == Loaded(None, recs(1, 2))
    assert await b.append([Append("pl", eb, recs(3, tag=b"B"))]) == [None]
    assert (await a.load("pl")).records == recs(1, 2) + recs(3, tag=b"B")


async def test_two_hosts_racing_acquire_and_append(env):
    """Hosts take the entity from each other while both keep appending (each activation is
    acquire, then load to learn the last seq): every acknowledged record is there, in order,
    none doubled, and every refusal is STALE_EPOCH."""
    hosts = [await env.open(), await env.open()]
    acked: list[Record] = []

    async def write(h: int, n: int) -> None:
        epoch, nxt = 0, 0
        for i in range(n):
            if not epoch:
                epoch = await hosts[h].acquire("k")
                nxt = (await hosts[h].load("k")).last_seq + 1
            rec = Record(nxt, b"host%d-%d" % (h, i))
            res = (await hosts[h].append([Append("k", epoch, [rec])]))[0]
            if res is None:
                acked.append(rec)
                nxt += 1
            else:
                assert res.code is ErrorCode.STALE_EPOCH
                epoch = 0

    await asyncio.gather(write(0, 25), write(1, 25))
    got = (await hosts[0].load("k")).records
    assert got == sorted(acked, key=lambda r: r.seq)
    assert [r.seq for r in got] == list(range(1, len(got) + 1))


async def test_erase_leaves_no_byte_of_the_key(env):
    """erase() removes the records, the snapshot and the owners row: neither the key nor the data
    is anywhere in the backend's bytes afterwards; other keys are untouched."""
    s = await env.open()
    e = await s.acquire("session:zed-erase-me")
    await s.append([Append("session:zed-erase-me", e, recs(1, 2, 3, tag=b"zed-erase-me-data"))])
    await s.write_snapshot("session:zed-erase-me", e, Snapshot(2, b"snap zed-erase-me-data"))
    await s.append([Append("session:zed-erase-me", e, recs(4, tag=b"zed-erase-me-data"))])
    assert await s.load("session:zed-erase-me") != Loaded(None, [])       # tiered: the cache is filled
    k = await s.acquire("other")
    await s.append([Append("other", k, recs(1, tag=b"kept"))])
    assert b"zed-erase-me" in await env.raw_bytes()      # the scan does see stored bytes
    assert await s.erase("session:zed-erase-me", e) is True
    assert await s.load("session:zed-erase-me") == Loaded(None, [])
    assert b"zed-erase-me" not in await env.raw_bytes()
    assert await s.load("other") == Loaded(None, recs(1, tag=b"kept"))


async def test_erase_keeps_fencing(env):
    """After an erase every epoch of the key is greater than any handed out before it (the epoch
    floor), so a host still holding an old epoch can never write again, even after the key is
    written anew."""
    a, b = await env.open(), await env.open()
    old = await a.acquire("pl")
    await a.append([Append("pl", old, recs(1))])
    cur = await b.acquire("pl")
    await b.append([Append("pl", cur, recs(2))])
    with pytest.raises(SyncopateError) as err:
        await a.erase("pl", old)                              # a non-owner may not erase
    assert err.value.code is ErrorCode.STALE_EPOCH
    assert await b.load("pl") == Loaded(None, recs(1, 2))     # ... and changed nothing
    assert await b.erase("pl", cur) is True
    assert await b.erase("pl", cur) is False                  # idempotent: nothing left to erase
    assert await a.erase("never:stored", 1) is False
    again = [await b.acquire("pl") for _ in range(3)]
    assert min(again) > cur and again == sorted(again)
    fresh = await a.acquire("brand:new")
    assert fresh > cur                                        # the floor is global: no per-key memory
    assert codes(await a.append([Append("pl", old, recs(1, tag=b"A"))])) == [ErrorCode.STALE_EPOCH]
    assert codes(await a.append([Append("pl", cur, recs(1, tag=b"A"))])) == [ErrorCode.STALE_EPOCH]
    assert await b.append([Append("pl", again[-1], recs(1, tag=b"B"))]) == [None]
    assert await a.load("pl") == Loaded(None, recs(1, tag=b"B"))


async def test_erase_floor_survives_reopen(env):
    s = await env.open()
    for _ in range(4):
        e = await s.acquire("x")
    await s.erase("x", e)
    await s.close()
    s2 = await env.open()
    assert await s2.acquire("x") > e


async def test_unknown_key_loads_empty(env):
    s = await env.open()
    assert await s.load("nobody:ever") == Loaded(None, [])
    await s.acquire("acquired:only")
    assert await s.load("acquired:only") == Loaded(None, [])


async def test_loaded_data_is_independent_bytes(env):
    s = await env.open()
    e = await s.acquire("a")
    buf = bytearray(b"mutable")
    await s.append([Append("a", e, [Record(1, bytes(buf))])])
    await s.write_snapshot("a", e, Snapshot(1, bytes(buf)))
    await s.append([Append("a", e, [Record(2, bytes(buf))])])
    buf[:] = b"changed"
    one, two = await s.load("a"), await s.load("a")
    assert type(one.snapshot.data) is bytes and type(one.records[0].data) is bytes
    assert one == two == Loaded(Snapshot(1, b"mutable"), [Record(2, b"mutable")])


async def test_random_histories_match_the_memory_model(env):
    """Seeded random interleavings of two hosts (acquire/append/snapshot/load) against the fake."""
    rng = random.Random(f"contract-{env.kind}")
    model = MemoryStore()
    hosts = [await env.open(), await env.open()]
    held = [{}, {}]
    keys = ["x", "y", "z"]
    for step in range(120):
        h, key, op = rng.randrange(2), rng.choice(keys), rng.random()
        want = await model.load(key)
        if op < 0.2:
            e = await hosts[h].acquire(key)
            assert e == await model.acquire(key)
            held[h][key] = e
        elif op < 0.65:
            epoch = held[h].get(key, 0)
            new = recs(*range(want.last_seq + 1, want.last_seq + 1 + rng.randint(1, 3)), tag=b"%d-" % step)
            other = rng.choice(keys)
            batch = [Append(key, epoch, new)]
            if other != key and rng.random() < 0.5:
                nxt = (await model.load(other)).last_seq + 1
                batch.append(Append(other, held[h].get(other, 0), recs(nxt, tag=b"%d+" % step)))
            assert codes(await hosts[h].append(batch)) == codes(await model.append(batch))
        elif op < 0.8 and want.last_seq > 0:
            seq = rng.randint(max(0, (want.snapshot.seq if want.snapshot else 0) - 1), want.last_seq)
            snap, epoch = Snapshot(seq, b"snap-%d" % step), held[h].get(key, 0)
            try:
                await model.write_snapshot(key, epoch, snap)
                expect = None
            except SyncopateError as err:
                expect = err.code
            try:
                await hosts[h].write_snapshot(key, epoch, snap)
                got = None
            except SyncopateError as err:
                got = err.code
            assert got == expect
        elif env.kind == "tiered" and op < 0.85:
            await env.flush_cache()
        else:
            assert await hosts[h].load(key) == want, f"step {step}"
    for key in keys:
        assert await hosts[0].load(key) == await model.load(key)


# -- PostgreSQL specifics -----------------------------------------------------------------------
async def test_postgres_append_waiting_on_acquire_sees_the_new_epoch():
    """An append whose owner-row lock waits for an in-flight acquire re-checks the committed
    epoch (READ COMMITTED re-reads the locked row), so it is refused."""
    s = PostgresStore(PG_DSN, prefix=f"t{uuid.uuid4().hex[:16]}_")
    await s.start()
    try:
        e = await s.acquire("k")
        async with s._pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await conn.execute(f"UPDATE {s.prefix}owners SET epoch = epoch + 1 WHERE key = 'k'")
            pending = asyncio.create_task(s.append([Append("k", e, recs(1))]))
            # wait until PostgreSQL itself reports the append waiting on the owner row's lock
            deadline = asyncio.get_running_loop().time() + 10
            async with s._pool.acquire() as probe:
                while not await probe.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                               " AND query LIKE '%owners%'"):
                    assert asyncio.get_running_loop().time() < deadline, "the append never waited on the lock"
                    await asyncio.sleep(0.005)
            assert not pending.done()           # blocked on the owner row
            await tx.commit()
            assert codes(await pending) == [ErrorCode.STALE_EPOCH]
        assert await s.load("k") == Loaded(None, [])
        assert await s.acquire("k") == e + 2 and await s.last_seq("k") == -1
    finally:
        await s.drop()
        await s.close()


async def test_postgres_unreachable_is_store_unavailable():
    s = PostgresStore("postgresql://postgres@127.0.0.1:1/test", prefix="t_unreachable_", timeout=2)
    with pytest.raises(SyncopateError) as err:
        await s.start()
    assert err.value.code is ErrorCode.STORE_UNAVAILABLE


# -- tiered specifics ---------------------------------------------------------------------------
@pytest.fixture
async def tiered(tmp_path):
    e = Env("tiered", tmp_path)
    try:
        yield e
    finally:
        await e.cleanup()


async def _seed(t: TieredStore, key: str = "pl") -> int:
    e = await t.acquire(key)
    await t.append([Append(key, e, recs(1, 2, 3))])
    await t.write_snapshot(key, e, Snapshot(3, b"S3"))
    await t.append([Append(key, e, recs(4, 5))])
    return e


async def test_tiered_activation_hits_the_cache_after_warm_up(tiered):
    t = await tiered.open()
    await _seed(t)
    other = await tiered.open()                 # another host activates it
    loads = other.pg.loads
    await other.acquire("pl")
    assert await other.load("pl") == Loaded(Snapshot(3, b"S3"), recs(4, 5))
    assert other.pg.loads == loads and other.stats["hits"] == 1
    await other.load("pl")
    assert other.pg.loads == loads and other.stats["hits"] == 2


async def test_tiered_flushed_cache_is_still_correct(tiered):
    t = await tiered.open()
    await _seed(t)
    await tiered.flush_cache()
    await t.acquire("pl")
    assert await t.load("pl") == Loaded(Snapshot(3, b"S3"), recs(4, 5))
    assert t.stats["misses"] == 1
    loads = t.pg.loads
    await t.acquire("pl")
    assert await t.load("pl") == Loaded(Snapshot(3, b"S3"), recs(4, 5))   # refilled
    assert t.pg.loads == loads


async def test_tiered_never_serves_a_cache_behind_postgres(tiered):
    t = await tiered.open()
    e = await _seed(t)
    # `t` crashes between a PG commit and its cache write: PG moved on, the cache didn't.
    raw = PostgresStore(PG_DSN, prefix=tiered.prefix)
    await raw.start()
    try:
        assert await raw.append([Append("pl", e, recs(6, tag=b"uncached"))]) == [None]
    finally:
        await raw.close()
    want = Loaded(Snapshot(3, b"S3"), recs(4, 5) + recs(6, tag=b"uncached"))
    t2 = await tiered.open()                    # the next owner
    e2 = await t2.acquire("pl")
    assert await t2.load("pl") == want
    assert t2.stats["stale"] == 1 and t2.stats["misses"] == 1
    assert await t.load("pl") == want           # also the fenced host, without a new acquire
    assert t.stats["hits"] == 1                 # ...from the entry the miss refilled
    # The next append extends the refilled entry; a gap (seq 9 after 7) drops it instead.
    await t2.append([Append("pl", e2, recs(7))])
    assert (await t2.load("pl")).records[-1] == Record(7, b"r7") and t2.stats["hits"] == 1
    await t2.append([Append("pl", e2, recs(9))])
    assert await t2.cache.client.exists(f"{tiered.prefix}c:pl") == 0
    assert (await t2.load("pl")).records[-2:] == recs(7, 9)


async def test_tiered_late_cache_write_of_a_fenced_host_is_ignored(tiered):
    t = await tiered.open()
    await _seed(t)                              # cached: snapshot 3, tail 4, 5
    entry = await t.cache.client.hgetall(f"{tiered.prefix}c:pl")
    # An old owner's delayed extend of records 4..5 (or 2..3) arrives after the entry moved on.
    assert await t._extend(keys=[f"{tiered.prefix}c:pl"], args=[t.ttl_ms, t.max_tail_bytes, 3, 5, b"junk"]) == [0]
    assert await t._extend(keys=[f"{tiered.prefix}c:pl"], args=[t.ttl_ms, t.max_tail_bytes, 1, 3, b"junk"]) == [0]
    assert await t.cache.client.hgetall(f"{tiered.prefix}c:pl") == entry
    assert await t.load("pl") == Loaded(Snapshot(3, b"S3"), recs(4, 5)) and t.stats["hits"] == 1


async def test_tiered_degrades_to_postgres_when_redis_fails(tiered):
    t = TieredStore(PostgresStore(PG_DSN, prefix=tiered.prefix),
                    RedisStore(prefix=tiered.prefix, client=connect("redis://127.0.0.1:1/0")))
    await t.pg.start()                          # start() itself would refuse the dead Redis
    tiered.opened.append(t.pg)
    e = await t.acquire("pl")
    assert await t.append([Append("pl", e, recs(1, 2))]) == [None]
    await t.write_snapshot("pl", e, Snapshot(1, b"S1"))
    assert await t.load("pl") == Loaded(Snapshot(1, b"S1"), recs(2))
    assert t.stats["cache_errors"] >= 3 and await t.ping()
    await t.cache.client.aclose()


# -- factory --------------------------------------------------------------------------------------
async def test_tiered_erase_fails_when_the_cache_cannot_be_cleared(tiered, monkeypatch):
    t = await tiered.open()
    """The cache entry holds the erased bytes too: a failed delete there is STORE_UNAVAILABLE
    (the caller retries), and the retry clears it."""
    e = await _seed(t, "gone")
    await t.load("gone")
    from redis.exceptions import ConnectionError as RedisDown

    real = t.cache.client.delete

    async def down(*keys):
        raise RedisDown("redis is down (test)")
    monkeypatch.setattr(t.cache.client, "delete", down)
    with pytest.raises(SyncopateError) as err:
        await t.erase("gone", e)
    assert err.value.code is ErrorCode.STORE_UNAVAILABLE
    assert await t.cache.client.exists(t._k("gone")) == 1
    monkeypatch.setattr(t.cache.client, "delete", real)
    assert await t.erase("gone", e) is False          # PostgreSQL was already erased
    assert await t.cache.client.exists(t._k("gone")) == 0
    assert await t.load("gone") == Loaded(None, [])


def test_make_store_picks_the_backend(tmp_path):
    assert isinstance(make_store(str(tmp_path)), SQLiteStore)
    assert isinstance(make_store(str(tmp_path), postgres_dsn=PG_DSN), PostgresStore)
    tiered = make_store(str(tmp_path), redis_url=REDIS_URL, postgres_dsn=PG_DSN, prefix="x_")
    assert isinstance(tiered, TieredStore) and tiered.durable and tiered.pg.prefix == "x_"
    with pytest.raises(ValueError, match="postgres-dsn"):
        make_store(str(tmp_path), redis_url=REDIS_URL)


# -- SQLite in a process of its own ----------------------------------------------------------------
async def test_sqlite_process_store_that_dies_fails_every_call_retryably(tmp_path):
    store = SQLiteProcessStore(tmp_path / "syncopate.db")
    await store.start()
    try:
        e = await store.acquire("pl")
        assert await store.append([Append("pl", e, recs(1))]) == [None]
        store._proc.kill()                           # the child dies (OOM killer, a crash)
        with pytest.raises(SyncopateError) as err:
            await asyncio.wait_for(store.append([Append("pl", e, recs(2))]), 10)
        assert err.value.code == ErrorCode.STORE_UNAVAILABLE and err.value.retryable
        with pytest.raises(SyncopateError) as again:
            await store.load("pl")
        assert again.value.code == ErrorCode.STORE_UNAVAILABLE
        assert await store.ping() is False
    finally:
        await store.close()
    reopened = SQLiteStore(tmp_path / "syncopate.db")   # what was acknowledged is there
    await reopened.start()
    try:
        assert (await reopened.load("pl")).records == recs(1)
    finally:
        await reopened.close()


def test_sqlite_runs_in_its_own_process_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNCOPATE_SQLITE_PROCESS", raising=False)
    store = make_store(str(tmp_path))
    assert isinstance(store, SQLiteStore) and not isinstance(store, SQLiteProcessStore)
    monkeypatch.setenv("SYNCOPATE_SQLITE_PROCESS", "1")
    assert isinstance(make_store(str(tmp_path)), SQLiteProcessStore)
