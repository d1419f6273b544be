"""A deleted user in the event pipeline (docs/data-rights.md, "Stream counts and the event
pipeline"): after `DELETE /v1/me` no stored byte of the pipeline holds the user's id (the counts
store's file and WAL; the bus: the SQLite log's file and WAL, or every byte Redis holds of the
stream, deleted entries included), the per-track, per-day counts are what they were, reconcile
finds no difference, another user's plays and the bus itself go on as before. The deletion waits
for the consumer to apply the user's last events first, and one crashed between the pipeline's
steps is resumed by the next server and completes. On both buses: the SQLite log and Redis Streams.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest

from gateway.erasure import ANONYMOUS
from storage.redis import connect as redis_connect
from storage.sqlite import SQLiteStore
from syncopate.events.consumer import Consumer
from syncopate.events.reconcile import reconcile
from syncopate.server import LocalServer
from tests.support.playlists import eventually, local_spec, rest, unblocked
from tests.support.store_bytes import redis_stream_bytes, sqlite_bytes

REDIS_URL = os.environ.get("SYNCOPATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


class Pipeline:
    """A server's data dir and bus kind; new servers over the same data (a restart)."""

    def __init__(self, bus: str, tmp_path) -> None:
        self.bus = bus
        self.data_dir = str(tmp_path / "data")
        self.store_path = tmp_path / "syncopate.db"
        self.prefix = f"dp{uuid.uuid4().hex[:10]}_"

    def spec(self):
        return local_spec(self.data_dir, prefix=self.prefix, **({"redis_url": REDIS_URL} if self.bus == "redis" else {}))

    async def start(self, bb) -> LocalServer:
        async with unblocked(bb):
            return await LocalServer(self.spec(), store=SQLiteStore(self.store_path)).start()

    async def raw(self) -> bytes:
        """Every byte the pipeline stores: the counts store, and the bus."""
        out = await sqlite_bytes(os.path.join(self.data_dir, "eventcounts.db"))
        if self.bus == "sqlite":
            return out + await sqlite_bytes(os.path.join(self.data_dir, "events.db"))
        r = redis_connect(REDIS_URL)
        try:
            keys = [k async for k in r.scan_iter(match=self.prefix + "*")]
            assert keys == [f"{self.prefix}events".encode()], keys      # the stream is the bus's one key
            return out + await redis_stream_bytes(r, keys[0])
        finally:
            await r.aclose()

    async def cleanup(self) -> None:
        if self.bus == "redis":
            r = redis_connect(REDIS_URL)
            keys = [k async for k in r.scan_iter(match=self.prefix + "*")]
            if keys:
                await r.delete(*keys)
            await r.aclose()


@pytest.fixture(params=["sqlite", "redis"])
async def pipeline(request, tmp_path):
    p = Pipeline(request.param, tmp_path)
    try:
        yield p
    finally:
        await p.cleanup()


def tracks(srv, n):
    out = [t.uri for t in srv.gateway.ctx.catalog.tracks if t.duration_ms >= 90_000][:n]
    assert len(out) == n
    return out


def ev(eid, uri, at, ms=60_000, device="phone", **kw):
    return {"event_id": eid, "device_id": device, "uri": uri, "played_at_ms": at, "ms_played": ms, **kw}


async def upload(http, srv, token, events) -> None:
    st, res = await rest(http, "POST", f"{srv.url}/v1/me/player/events", token, json={"events": events})
    assert st == 200 and res["accepted"] == len(events), res


async def applied(srv, n: int) -> None:
    """Until the consumer has applied n events in all."""
    async def done():
        return await srv.events.counts.event_count() == n
    await eventually(done, timeout=15, what=f"{n} events applied")


async def listening(http, srv, zed, bob, uris) -> dict:
    """zed: three streams (one private) and a short play; bob: two streams, one of a track zed played too."""
    now = int(time.time() * 1000)
    z, b = srv.auth.mint(zed), srv.auth.mint(bob)
    await upload(http, srv, z, [ev("z1", uris[0], now - 4_000_000), ev("z2", uris[1], now - 3_000_000, private=True),
                                ev("z3", uris[2], now - 2_000_000, ms=10_000, device="tablet"),
                                ev("z4", uris[2], now - 1_000_000, context_uri="spotify:album:" + "a" * 22)])
    await upload(http, srv, b, [ev("b1", uris[0], now - 3_500_000), ev("b2", uris[3], now - 2_500_000)])
    await applied(srv, 6)
    return {"z": z, "b": b, "now": now}


async def snapshot(srv) -> tuple[dict, dict]:
    counts = await srv.events.counts.stream_counts()
    rec = await reconcile(srv.spec.data_dir, bus=srv.events.bus, counts=srv.events.counts)
    return counts, rec


async def delete(http, srv, user, token) -> dict:
    st, receipt = await rest(http, "DELETE", f"{srv.url}/v1/me", token, json={"confirm_user_id": user})
    assert st == 200, receipt
    return receipt


async def check_erased(http, srv, pipeline, zed, bob, b, counts_before, uris) -> None:
    raw = await pipeline.raw()
    at = raw.find(zed.encode())
    assert at < 0, f"{zed} is still stored: ...{raw[max(0, at - 200):at + 80]!r}..."
    assert bob.encode() in raw                               # the scan sees what is stored
    counts, rec = await snapshot(srv)
    assert counts == counts_before
    assert rec["differences"] == [] and rec["streams"] == 5 and rec["pending"] == 0 and rec["backlog"] == 0, rec
    st, page = await rest(http, "GET", f"{srv.url}/v1/me/player/recently-played?limit=10", b)
    assert st == 200 and [i["track"]["uri"] for i in page["items"]] == [uris[3], uris[0]]
    # the bus goes on: a new play of bob's is counted once (the Redis group kept its place)
    await upload(http, srv, b, [ev("b3", uris[1], int(time.time() * 1000) - 500_000)])
    await eventually(lambda: _count_is(srv, uris[1], counts_before[uris[1]], 1), timeout=15, what="bob's new play")
    counts, rec = await snapshot(srv)
    assert rec["differences"] == [] and rec["streams"] == 6, rec


async def _count_is(srv, uri, before: dict, more: int) -> bool:
    got = (await srv.events.counts.stream_counts([uri])).get(uri, {})
    return sum(got.values()) == sum(before.values()) + more


async def test_a_deleted_user_leaves_no_byte_in_the_pipeline_and_the_counts_stand(pipeline, http, unique, blockbuster):
    srv = await pipeline.start(blockbuster)
    try:
        zed, bob = f"zed{unique}", f"bob{unique}"
        uris = tracks(srv, 4)
        s = await listening(http, srv, zed, bob, uris)
        counts_before, rec = await snapshot(srv)
        assert rec["differences"] == [] and rec["streams"] == 5, rec
        assert {u: sum(d.values()) for u, d in counts_before.items()} == {uris[0]: 2, uris[1]: 1, uris[2]: 1,
                                                                          uris[3]: 1}
        assert zed.encode() in await pipeline.raw()

        receipt = await delete(http, srv, zed, s["z"])
        assert receipt["listening_events_anonymised"] == 3     # z1, z2, z4; z3 (not a stream) was deleted
        await check_erased(http, srv, pipeline, zed, bob, s["b"], counts_before, uris)
        # what is kept names nobody: every kept row of the user is the anonymous id's, with no device,
        # context or time of day
        db = srv.events.counts._db
        rows = await asyncio.to_thread(lambda: db.execute(
            "SELECT user_id, device_id, context_uri, market, product, played_at_ms % 86400000, stream"
            f" FROM {srv.events.counts.p}ev_events WHERE user_id != ?", (bob,)).fetchall())
        assert sorted(rows) == [(ANONYMOUS, None, None, None, None, 0, 1)] * 3
        plays = await asyncio.to_thread(lambda: db.execute(
            f"SELECT COUNT(DISTINCT play_id) FROM {srv.events.counts.p}ev_counted WHERE user_id = ?", (ANONYMOUS,)).fetchone())
        assert plays == (3,)
        # running the deletion again finds nothing more
        again = await srv.gateway.ctx.data_rights.delete(zed)
        assert again["listening_events_anonymised"] == 0
    finally:
        async with unblocked(blockbuster):
            await srv.stop()


async def test_the_deletion_waits_for_the_consumer_to_apply_the_users_last_events(pipeline, http, unique, blockbuster):
    srv = await pipeline.start(blockbuster)
    try:
        zed, bob = f"zed{unique}", f"bob{unique}"
        uris = tracks(srv, 4)
        s = await listening(http, srv, zed, bob, uris)
        # the consumer stops; an upload of zed's is on the bus, not applied
        events = srv.events
        events.consumer.stop()
        await events._task
        await upload(http, srv, s["z"], [ev("late", uris[3], s["now"] - 600_000)])
        async def on_the_bus():               # the outbox publishes it after the upload's commit
            return await events.bus.backlog() == 1
        await eventually(on_the_bus, timeout=10, what="the late upload on the bus")
        reached, counted = asyncio.Event(), []

        def fault(step: str):
            if step == "pipeline:drain":
                reached.set()
            if step == "pipeline:counts":      # past the wait: the late event is applied and counted
                async def look():
                    counted.append(await events.counts.event_count())
                return look()
        srv.gateway.ctx.data_rights.fault = fault
        deletion = asyncio.create_task(delete(http, srv, zed, s["z"]))
        await asyncio.wait_for(reached.wait(), 30)
        assert not deletion.done() and counted == []
        # the consumer comes back (a new incarnation, as after a restart)
        events.consumer = Consumer(events.bus, events.counts, "c-back")
        events._task = asyncio.create_task(events.consumer.run())
        receipt = await asyncio.wait_for(deletion, 60)
        assert counted == [7] and receipt["listening_events_anonymised"] == 4
        counts, rec = await snapshot(srv)
        assert rec["differences"] == [] and rec["streams"] == 6, rec
        assert sum(counts[uris[3]].values()) == 2             # bob's and zed's late play
        raw = await pipeline.raw()
        assert zed.encode() not in raw
    finally:
        async with unblocked(blockbuster):
            await srv.stop()


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", ["pipeline:counts", "pipeline:bus"])
async def test_a_deletion_crashed_in_the_pipeline_is_resumed_and_completes(pipeline, step, http, unique, blockbuster):
    srv = await pipeline.start(blockbuster)
    zed, bob = f"zed{unique}", f"bob{unique}"
    uris = tracks(srv, 4)
    s = await listening(http, srv, zed, bob, uris)
    counts_before, _ = await snapshot(srv)

    def fault(name: str) -> None:
        if name == step:
            raise Crash(f"crash before {name}")
    srv.gateway.ctx.data_rights.fault = fault
    st, err = await rest(http, "DELETE", f"{srv.url}/v1/me", s["z"], json={"confirm_user_id": zed})
    assert st == 500, (st, err)
    assert zed.encode() in await pipeline.raw()
    async with unblocked(blockbuster):
        await srv.stop()                      # the crash: the store and the pipeline's data stay

    srv = await pipeline.start(blockbuster)   # its gateway resumes the pending deletion
    try:
        rights = srv.gateway.ctx.data_rights

        async def finished() -> bool:
            st = await rights.refresh()
            return not st["pending"] and not rights._running
        await eventually(finished, timeout=30, what="the resumed deletion")
        await check_erased(http, srv, pipeline, zed, bob, s["b"], counts_before, uris)
    finally:
        async with unblocked(blockbuster):
            await srv.stop()
