"""Host leases (read fencing) and the membership view, on every store that keeps them: memory,
SQLite, PostgreSQL, tiered. Leases run on the store's clock; the tests use short real leases
(memory: a clock the test moves)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import uuid

import pytest

from protocols.errors import ErrorCode, SyncopateError
from storage.base import Append, Dropped, LeaseHeld, Membership, Record
from storage.memory import MemoryStore
from storage.postgres import PostgresStore
from storage.redis import RedisStore
from storage.sqlite import SCHEMA, SQLiteStore
from storage.sqlite_process import SQLiteProcessStore
from storage.tiered import TieredStore

PG_DSN = os.environ.get("SYNCOPATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SYNCOPATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
LEASE = 0.4          # seconds: short, so expiry is observable quickly


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Env:
    def __init__(self, kind: str, tmp_path) -> None:
        self.kind, self.tmp_path = kind, tmp_path
        self.prefix = f"t{uuid.uuid4().hex[:16]}_"
        self.clock = Clock()
        self.memory = MemoryStore(clock=self.clock)
        self.opened = []

    async def open(self):
        if self.kind == "memory":
            return self.memory
        if self.kind == "sqlite":
            s = SQLiteStore(self.tmp_path / "syncopate.db")
        elif self.kind == "sqlite-process":
            s = SQLiteProcessStore(self.tmp_path / "syncopate.db")
        elif self.kind == "postgres":
            s = PostgresStore(PG_DSN, prefix=self.prefix)
        else:
            s = TieredStore(PostgresStore(PG_DSN, prefix=self.prefix), RedisStore(REDIS_URL, prefix=self.prefix))
        self.opened.append(s)
        await s.start()
        return s

    async def expire(self) -> None:
        """Let a lease of LEASE seconds (taken before this call) run out on the store's clock."""
        if self.kind == "memory":
            self.clock.t += LEASE + 0.01
        else:
            await asyncio.sleep(LEASE + 0.05)      # the store's own clock: real time must pass

    async def cleanup(self) -> None:
        for s in self.opened:
            with contextlib.suppress(SyncopateError, OSError):
                await s.close()
        if self.kind in ("postgres", "tiered"):
            pg = PostgresStore(PG_DSN, prefix=self.prefix, max_size=2)
            await pg.start()
            await pg.drop()
            await pg.close()
        if self.kind == "tiered":
            r = RedisStore(REDIS_URL, prefix=self.prefix)
            await r.drop()
            await r.close()


@pytest.fixture(params=["memory", "sqlite", "sqlite-process", "postgres", "tiered"])
async def env(request, tmp_path):
    e = Env(request.param, tmp_path)
    try:
        yield e
    finally:
        await e.cleanup()


async def test_a_live_lease_blocks_another_holder_until_released(env):
    a, b = await env.open(), await env.open()
    assert await a.open_lease("A", 30) and await b.open_lease("B", 30)
    ea = await a.acquire("k", "A")
    with pytest.raises(LeaseHeld) as exc:
        await b.acquire("k", "B")
    assert exc.value.holder == "A" and exc.value.code == ErrorCode.HOST_UNAVAILABLE
    assert await a.acquire("k", "A") == ea + 1          # the holder itself may re-acquire
    assert not await a.release("k", ea, "A")             # not at an old epoch
    assert await a.release("k", ea + 1, "A")
    eb = await b.acquire("k", "B")
    assert eb == ea + 2
    res = await a.append([Append("k", ea + 1, [Record(1, b"x")])])
    assert res[0].code == ErrorCode.STALE_EPOCH         # fencing still refuses the old owner's write


async def test_an_expired_lease_lets_another_holder_take_over_and_is_not_renewed(env):
    a, b = await env.open(), await env.open()
    assert await a.open_lease("A", LEASE)
    await b.open_lease("B", 30)
    await a.acquire("k", "A")
    with pytest.raises(LeaseHeld):
        await b.acquire("k", "B")
    await env.expire()
    await b.acquire("k", "B")
    assert not await a.renew_lease("A", LEASE)           # expired: a lease never comes back to life
    with pytest.raises(LeaseHeld):
        await a.acquire("k", "A")                        # and B's live lease now holds the key


async def test_renewal_keeps_the_lease(env):
    # Renewed three times a third of its length apart: alive past its first expiry. On a real store
    # the lease is longer than the short one above, so that a busy machine's scheduling delays
    # (hundreds of ms at load 30 on two cores) can't lapse it between two renewals.
    lease = LEASE if env.kind == "memory" else 3.0
    a, b = await env.open(), await env.open()
    await a.open_lease("A", lease)
    await a.acquire("k", "A")
    for _ in range(4):
        if env.kind == "memory":
            env.clock.t += lease / 3
        else:
            await asyncio.sleep(lease / 3)
        assert await a.renew_lease("A", lease)
    with pytest.raises(LeaseHeld):
        await b.acquire("k", "B")


async def test_a_revoked_lease_still_blocks_until_it_expires(env):
    a, b = await env.open(), await env.open()
    await a.open_lease("A", LEASE)
    await a.acquire("k", "A")
    await b.revoke_lease("A")
    assert not await a.renew_lease("A", LEASE)
    assert not await a.open_lease("A", LEASE)            # revoked for good: a new process takes a new id
    with pytest.raises(LeaseHeld):
        await b.acquire("k", "B")                        # a slow holder may answer until expiry
    await env.expire()
    await b.acquire("k", "B")


async def test_unleased_acquire_takes_unconditionally(env):
    a, b = await env.open(), await env.open()
    await a.open_lease("A", 30)
    e = await a.acquire("k", "A")
    assert await b.acquire("k") == e + 1                 # fencing only (single-process tests, tools)
    await b.open_lease("B", 30)
    assert await b.acquire("k", "B") == e + 2            # held by nobody: no lease to wait for


async def test_membership_compare_and_set(env):
    a, b = await env.open(), await env.open()
    v0 = await a.membership("d1")
    assert v0.epoch == 0 and v0.members == {}
    v1 = await a.change_membership("d1", 0, {0: "h0", 1: "h1"})
    assert v1.epoch == 1 and v1.slots == (0, 1)
    assert await b.change_membership("d1", 0, {0: "x"}) is None       # lost the race: nothing changed
    v2 = await b.change_membership("d1", 1, {1: "h1"})
    assert v2.epoch == 2
    got = await a.membership("d1")
    assert got.epoch == 2 and got.members == {1: "h1"}
    assert (await a.membership("d2")).epoch == 0                      # one view per deployment


async def test_drop_dead_deletes_only_leases_run_out_past_the_bound_and_views_of_dead_deployments(env):
    a, b = await env.open(), await env.open()
    for holder in ("gone", "revoked"):
        assert await a.open_lease(holder, LEASE)
    await a.revoke_lease("revoked")
    assert await a.open_lease("live", 30) and await a.open_lease("revoked-live", 30)
    await a.revoke_lease("revoked-live")                 # revoked, but it has not run out yet
    await a.acquire("k", "gone")
    assert (await a.change_membership("dead", 0, {0: "gone", 1: "revoked"})).epoch == 1
    assert (await a.change_membership("alive", 0, {0: "live", 1: "gone"})).epoch == 1
    assert (await a.change_membership("empty", 0, {})).epoch == 1
    await env.expire()
    assert await b.drop_dead(30.0) == Dropped(0, 0)      # run out, but not 30 s ago: kept
    assert await b.drop_dead(0.0) == Dropped(2, 1)       # "gone", "revoked"; the view "dead"
    assert await b.drop_dead(0.0) == Dropped(0, 0)
    assert await a.renew_lease("live", 30)               # a live holder's row is never touched
    assert not await a.open_lease("revoked-live", 30)    # still there, still revoked
    assert await a.membership("dead") == Membership(2, {})       # swept at 1: reads as the floor above it
    assert await a.membership("alive") == Membership(1, {0: "live", 1: "gone"})   # a live member: kept
    assert (await a.membership("empty")).epoch == 1      # no members: not judged dead
    await b.open_lease("B", 30)
    await b.acquire("k", "B")                            # the dropped holder counts as not live, as before


async def test_concurrent_sweeps_drop_each_dead_row_once_and_fail_none(env):
    stores = [await env.open() for _ in range(3)]
    for i in range(6):
        await stores[0].open_lease(f"h{i}", LEASE)
    await stores[0].change_membership("gone", 0, {0: "h0", 1: "h1"})
    await env.expire()
    got = await asyncio.gather(*(s.drop_dead(0.0) for s in stores))      # every host sweeps, at once
    assert (sum(g.leases for g in got), sum(g.views for g in got)) == (6, 1)
    assert await stores[1].membership("gone") == Membership(2, {})


async def test_a_swept_view_comes_back_above_every_epoch_it_had(env):
    """drop_dead deletes a dead deployment's view, but a view's epoch never goes back: a missing row
    reads as the store's view floor (above every epoch swept) and is re-created above it, so a
    gateway or host still holding the old epoch takes the new view."""
    a, b = await env.open(), await env.open()
    assert await a.open_lease("h0", LEASE)
    v = Membership()
    for members in ({0: "h0"}, {0: "h0", 1: "h1"}, {0: "h0"}, {0: "h0", 1: "h1"}):
        v = await a.change_membership("d", v.epoch, members)
    assert v.epoch == 4
    await env.expire()
    assert await a.open_lease("s", LEASE)
    assert (await a.change_membership("small", 0, {0: "s"})).epoch == 1
    assert await b.drop_dead(0.0) == Dropped(1, 1)               # h0's row, then the view "d"
    swept = await a.membership("d")
    assert swept == Membership(5, {})                             # above every epoch it had, no members
    assert await a.change_membership("d", 4, {0: "h2"}) is None   # computed against the swept view
    assert await a.change_membership("d", 0, {0: "h2"}) is None
    assert await a.open_lease("h2", 30)
    back = await b.change_membership("d", swept.epoch, {0: "h2"})
    assert back == Membership(6, {0: "h2"})
    assert await a.change_membership("d", swept.epoch, {0: "x"}) is None    # re-created once
    assert await a.membership("d") == back
    await env.expire()
    assert await b.drop_dead(0.0) == Dropped(1, 1)               # "s", then the view "small" (epoch 1)
    assert await a.membership("small") == Membership(5, {})      # the floor never goes down
    assert await b.change_membership("small", 5, {0: "h2"}) == Membership(6, {0: "h2"})
    assert await a.membership("d") == back                        # a live view: kept


async def test_racing_re_creations_of_a_swept_view_leave_one(env):
    stores = [await env.open() for _ in range(3)]
    assert await stores[0].open_lease("h0", LEASE)
    await stores[0].change_membership("d", 0, {0: "h0"})
    await env.expire()
    assert await stores[0].drop_dead(0.0) == Dropped(1, 1)
    got = await asyncio.gather(*(s.change_membership("d", 2, {0: f"n{i}"}) for i, s in enumerate(stores)))
    won = [v for v in got if v is not None]
    assert len(won) == 1 and won[0].epoch == 3           # the others lost the compare-and-set
    assert await stores[1].membership("d") == won[0]


async def test_racing_acquires_under_leases_leave_one_owner(env):
    stores = [await env.open() for _ in range(3)]
    for i, s in enumerate(stores):
        await s.open_lease(f"H{i}", 30)

    async def take(i):
        try:
            return i, await stores[i].acquire("k", f"H{i}")
        except LeaseHeld:
            return i, None

    won = [r for r in await asyncio.gather(*(take(i) for i in range(3))) if r[1] is not None]
    assert len(won) == 1                                 # the others see the winner's live lease


async def test_redis_alone_keeps_no_leases():
    r = RedisStore(REDIS_URL, prefix=f"t{uuid.uuid4().hex[:16]}_")
    await r.start()
    try:
        assert r.leases is False
        with pytest.raises(SyncopateError):
            await r.acquire("k", "A")
        with pytest.raises(SyncopateError):
            await r.membership("d")
    finally:
        await r.drop()
        await r.close()


def test_sqlite_schema_1_is_upgraded(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:       # the version-1 schema, as shipped before leases
        db.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        db.execute("CREATE TABLE owners (key TEXT PRIMARY KEY, epoch INTEGER NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute("INSERT INTO owners VALUES ('k', 7)")

    async def run():
        s = SQLiteStore(path)
        await s.start()
        try:
            await s.open_lease("A", 30)
            assert await s.acquire("k", "A") == 8
        finally:
            await s.close()

    asyncio.run(run())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT v FROM meta WHERE k='schema_version'").fetchone()[0] == "2"
        assert db.execute("SELECT holder FROM owners WHERE key='k'").fetchone()[0] == "A"


def test_a_sqlite_file_from_before_the_view_floor_opens_and_sweeps(tmp_path):
    """The view floor is one more row of `meta` (no schema change): a version-2 file without it
    reads a missing view at epoch 0, as before, until its first sweep writes the floor."""
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as db:
        for stmt in SCHEMA:
            db.execute(stmt)
        db.execute("ALTER TABLE owners ADD COLUMN holder TEXT")
        db.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        db.execute("""INSERT INTO membership VALUES ('d', 3, '[[0, "gone"]]')""")

    async def run():
        s = SQLiteStore(path)
        await s.start()
        try:
            assert await s.membership("d") == Membership(3, {0: "gone"})
            assert await s.membership("new") == Membership(0, {})
            assert (await s.change_membership("new", 0, {0: "h"})).epoch == 1
            assert await s.drop_dead(0.0) == Dropped(0, 2)      # no member of either has a lease row
            assert await s.membership("d") == Membership(4, {})
        finally:
            await s.close()

    asyncio.run(run())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT v FROM meta WHERE k='schema_version'").fetchone()[0] == "2"
        assert db.execute("SELECT v FROM meta WHERE k='view_floor'").fetchone()[0] == "4"


async def test_a_leased_acquire_after_an_erase_starts_above_the_epoch_floor(env):
    a = await env.open()
    await a.open_lease("A", 30)
    await a.acquire("gone", "A")
    e = await a.acquire("gone", "A")
    assert await a.erase("gone", e)                        # data rights: the owners row goes too
    assert await a.acquire("gone", "A") > e                # fencing survives: every later epoch is greater
    assert await a.acquire("fresh", "A") > e               # as for a key never seen (the floor is global)
