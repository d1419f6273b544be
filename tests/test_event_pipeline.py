"""The listening-event pipeline (docs/events.md): the host's outbox -> the bus (the embedded SQLite log,
and Redis Streams on the real Redis with a stream per test) -> the consumer group -> per-track,
per-day counts, exactly once across redeliveries and consumer crashes; reconcile.

Crashes: a hook at the consumer's crash points raises (the consumer is dropped with its entries
pending, as a killed process leaves them), and a real consumer process is SIGKILLed at each of them:
between receiving and committing, and between the commit and the ack."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.devicegroup import DeviceGroupEntity
from actors.entity import Command, Env, Principal
from actors.host import EntityHost
from protocols.errors import SyncopateError
from protocols.listening import ListeningEvent, day_of
from storage.memory import MemoryStore
from syncopate.events.bus import RedisStreamLog, SQLiteLog
from syncopate.events.consumer import Consumer
from syncopate.events.counts import PostgresCounts, SQLiteCounts
from syncopate.events.publish import Publisher
from syncopate.events.reconcile import reconcile
from tests.conftest import POSTGRES_DSN, REDIS_URL
from tests.support.catalog import CatalogBuilder, tid, turi
from tests.support.playlists import eventually

DAY0 = 1_767_225_600_000            # 2026-01-01T00:00:00Z
ROOT = Path(__file__).resolve().parent.parent


def _catalog():
    b = CatalogBuilder()
    b.artist("r" + "0" * 21, "Artist")
    b.album("a" + "0" * 21, ["r" + "0" * 21], "Album")
    for i in range(20):
        b.track(tid(i), "a" + "0" * 21, duration_ms=200_000)
    return b.build()


CAT = _catalog()


def event(user: str, n: int, track: int, *, stream: bool = True, play: str | None = None, private: bool = False,
          at: int | None = None) -> dict:
    at = DAY0 + n * 300_000 if at is None else at
    return ListeningEvent(user, f"e{n}", play or f"{user}/{at}/e{n}", "phone", turi(track), None, at,
                          60_000 if stream else 5_000, at + 60_000, "premium", "SE", private, stream,
                          "upload", at).to_wire()


@pytest.fixture(params=["sqlite", "redis"])
async def pipe(request, tmp_path, unique):
    """(bus, counts): the SQLite log with SQLite counts, or Redis Streams with PostgreSQL counts (as
    `serve --postgres-dsn --redis-url` runs them); stream, group and tables unique to the test."""
    if request.param == "sqlite":
        bus, counts = SQLiteLog(tmp_path / "events.db"), SQLiteCounts(tmp_path / "counts.db")
    else:
        bus = RedisStreamLog(REDIS_URL, stream=f"test:{unique}:events", group=f"g{unique}")
        counts = PostgresCounts(POSTGRES_DSN, prefix=f"{unique}_")
    await bus.start()
    await counts.start()
    yield bus, counts
    if request.param == "redis":
        await bus._r.delete(bus.stream)
        await counts._do(lambda c: c.execute(f"DROP TABLE IF EXISTS {unique}_ev_events, {unique}_ev_counted, "
                                             f"{unique}_ev_counts"))
    await bus.close()
    await counts.close()


class Crash(Exception):
    pass


def crash(_batch):
    raise Crash("killed here")


async def test_counts_per_track_and_day_once_per_play(pipe):
    bus, counts = pipe
    evs = [event("u1", 0, 1), event("u1", 1, 1), event("u1", 2, 2, stream=False),
           event("u2", 3, 1, at=DAY0 + 86_400_000 + 5),                   # the next day
           event("u2", 4, 3, play="u2/shared"), event("u2", 5, 3, play="u2/shared")]    # two events, one play
    await bus.publish(evs)
    c = Consumer(bus, counts, "c1", block_ms=50)
    await c.drain()
    got = await counts.stream_counts()
    assert got == {turi(1): {day_of(DAY0): 2, day_of(DAY0 + 86_400_000): 1}, turi(3): {day_of(DAY0): 1}}
    assert (c.applied, c.streams, c.duplicates) == (6, 4, 0)
    assert await counts.stream_counts([turi(1)], day_from=day_of(DAY0 + 86_400_000)) == {turi(1): {"2026-01-02": 1}}
    rep = await reconcile("", bus=bus, counts=counts)
    assert rep["differences"] == [] and rep["streams"] == 4 and rep["pending"] == 0 and rep["backlog"] == 0


async def test_an_entry_published_twice_counts_once(pipe):
    bus, counts = pipe
    evs = [event("u1", i, i % 3) for i in range(10)]
    await bus.publish(evs)
    await bus.publish(evs[3:7])                 # an outbox re-send after a lost acknowledgement
    c = Consumer(bus, counts, "c1", block_ms=50)
    await c.drain()
    assert c.streams == 10 and c.duplicates == 4
    assert sum(n for d in (await counts.stream_counts()).values() for n in d.values()) == 10
    assert (await reconcile("", bus=bus, counts=counts))["differences"] == []


@pytest.mark.parametrize("point", ["received", "committed"])
async def test_a_consumer_killed_mid_batch_leaves_the_counts_exact(pipe, point):
    bus, counts = pipe
    evs = [event("u1", i, i % 4) for i in range(30)]
    await bus.publish(evs)
    dead = Consumer(bus, counts, "dead", batch=10, hooks={point: crash})
    with pytest.raises(Crash):
        await dead.step()
    committed = sum(n for d in (await counts.stream_counts()).values() for n in d.values())
    assert committed == (10 if point == "committed" else 0)
    assert await bus.pending() == 10                    # taken and never acknowledged
    # another consumer of the group claims what the dead one held (idle at once here) and goes on
    rescue = Consumer(bus, counts, "rescue", batch=10, claim_idle_ms=0, block_ms=50)
    await rescue.drain()
    assert rescue.redelivered == 10
    assert rescue.duplicates == (10 if point == "committed" else 0)
    per_track = {u: sum(d.values()) for u, d in (await counts.stream_counts()).items()}
    assert per_track == {turi(0): 8, turi(1): 8, turi(2): 7, turi(3): 7}
    rep = await reconcile("", bus=bus, counts=counts)
    assert rep["differences"] == [] and rep["pending"] == 0 and rep["streams"] == 30


async def test_a_crash_inside_the_transaction_commits_nothing(pipe):
    bus, counts = pipe
    evs = [ListeningEvent.from_wire(event("u1", i, 1)) for i in range(5)]
    with pytest.raises(Crash):
        await counts.apply(evs, before_commit=lambda: crash(None))
    assert await counts.stream_counts() == {} and await counts.event_count() == 0
    res = await counts.apply(evs)
    assert (res.events, res.streams) == (5, 5)


async def test_entries_held_by_a_live_consumer_are_not_claimed_before_the_idle_time(pipe):
    bus, counts = pipe
    await bus.publish([event("u1", i, 1) for i in range(4)])
    slow = Consumer(bus, counts, "slow", hooks={"received": crash})
    with pytest.raises(Crash):
        await slow.step()
    other = Consumer(bus, counts, "other", claim_idle_ms=60_000, block_ms=20)
    assert await other.step() == 0                      # held, not yet presumed dead
    assert await bus.pending() == 4


async def test_private_plays_are_counted_but_not_recently_played(pipe):
    bus, counts = pipe
    await bus.publish([event("u1", 0, 1), event("u1", 1, 2, private=True), event("u1", 2, 3)])
    await Consumer(bus, counts, "c", block_ms=50).drain()
    assert set(await counts.stream_counts()) == {turi(1), turi(2), turi(3)}
    page = await counts.recently_played("u1", limit=10)
    assert [p["uri"] for p in page["plays"]] == [turi(3), turi(1)] and page["total"] == 2
    older = await counts.recently_played("u1", limit=1, before=page["plays"][0]["played_at_ms"])
    assert [p["uri"] for p in older["plays"]] == [turi(1)] and not older["more"]
    newer = await counts.recently_played("u1", limit=1, after=page["plays"][1]["played_at_ms"])
    assert [p["uri"] for p in newer["plays"]] == [turi(3)]
    assert (await counts.recently_played("u2"))["plays"] == []


async def test_reconcile_reports_a_count_changed_behind_the_consumer(pipe, tmp_path):
    bus, counts = pipe
    await bus.publish([event("u1", 0, 1), event("u1", 1, 2)])
    await Consumer(bus, counts, "c", block_ms=50).drain()
    p = counts.p
    if isinstance(counts, SQLiteCounts):
        await counts._run(lambda: counts._db.execute(f"UPDATE {p}ev_counts SET streams = streams + 1 WHERE track_uri = ?",
                                                     (turi(2),)))
    else:
        await counts._do(lambda c: c.execute(f"UPDATE {p}ev_counts SET streams = streams + 1 WHERE track_uri = $1",
                                             turi(2)))
    rep = await reconcile("", bus=bus, counts=counts)
    assert rep["differences"] == [{"track_uri": turi(2), "day": day_of(DAY0), "counted": 2, "recounted": 1}]


def test_the_reconcile_command_exits_non_zero_on_a_difference(tmp_path):
    from syncopate.cli import main

    async def fill(tamper: bool):
        bus, counts = SQLiteLog(tmp_path / "events.db"), SQLiteCounts(tmp_path / "eventcounts.db")
        await bus.start()
        await counts.start()
        await bus.publish([event("u1", 0, 1)])
        await Consumer(bus, counts, "c", block_ms=50).drain()
        if tamper:
            await counts._run(lambda: counts._db.execute("DELETE FROM syncopate_ev_counts"))
        await bus.close()
        await counts.close()

    asyncio.run(fill(False))
    assert main(["events", "reconcile", "--data-dir", str(tmp_path)]) == 0
    asyncio.run(fill(True))
    assert main(["events", "reconcile", "--data-dir", str(tmp_path), "--json"]) == 1


# -- a real kill ------------------------------------------------------------------------------------------
KILLED = """
import asyncio, sys, threading
from syncopate.events.bus import RedisStreamLog, SQLiteLog
from syncopate.events.consumer import Consumer
from syncopate.events.counts import PostgresCounts, SQLiteCounts
kind, a, b, marker, point = sys.argv[1:6]
async def main():
    if kind == "sqlite":
        bus, counts = SQLiteLog(a), SQLiteCounts(b)
    else:
        stream, prefix = b.split("|")
        bus, counts = RedisStreamLog(a, stream=stream, group="g" + prefix), PostgresCounts(sys.argv[6], prefix=prefix + "_")
    await bus.start(); await counts.start()
    def hold(batch):
        open(marker, "w").write(str(len(batch)))
        threading.Event().wait()          # hold here until killed
    await Consumer(bus, counts, "doomed", batch=7, hooks={point: hold}).step()
asyncio.run(main())
"""


@pytest.mark.ray      # drives a subprocess with blocking waits from the test's thread
@pytest.mark.parametrize("point", ["received", "committed"])
def test_a_consumer_process_killed_mid_batch(pipe, tmp_path, unique, point):
    """SIGKILL between receiving and committing ("received") and between the commit and the ack
    ("committed"): the counts end exact either way."""
    bus, counts = pipe
    loop = asyncio.new_event_loop()
    try:
        run = loop.run_until_complete
        # the fixture's clients belong to the test's loop; this sync test opens its own
        if isinstance(bus, SQLiteLog):
            bus2, counts2 = SQLiteLog(bus.path), SQLiteCounts(counts.path)
            argv = ["sqlite", bus.path, counts.path]
        else:
            bus2 = RedisStreamLog(REDIS_URL, stream=bus.stream, group=bus.group)
            counts2 = PostgresCounts(POSTGRES_DSN, prefix=counts.p)
            argv = ["redis", REDIS_URL, f"{bus.stream}|{bus.group[1:]}"]
        run(bus2.start())
        run(counts2.start())
        run(bus2.publish([event("u1", i, i % 2) for i in range(20)]))
        marker = tmp_path / "reached"
        proc = subprocess.Popen([sys.executable, "-c", KILLED, *argv, str(marker), point, POSTGRES_DSN], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.monotonic() + 60
            while not marker.exists() or not marker.read_text():
                assert proc.poll() is None, f"the consumer process ended before {point}"
                assert time.monotonic() < deadline, f"the consumer process never reached {point}"
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert marker.read_text() == "7"
        committed = 7 if point == "committed" else 0
        assert sum(n for d in run(counts2.stream_counts()).values() for n in d.values()) == committed
        assert run(bus2.pending()) == 7
        rescue = Consumer(bus2, counts2, "rescue", claim_idle_ms=0, block_ms=50)
        run(rescue.drain())
        assert rescue.redelivered == 7 and rescue.duplicates == committed
        assert {u: sum(d.values()) for u, d in run(counts2.stream_counts()).items()} == {turi(0): 10, turi(1): 10}
        assert run(reconcile("", bus=bus2, counts=counts2))["differences"] == []
        run(bus2.close())
        run(counts2.close())
    finally:
        loop.close()


# -- through the host's outbox ------------------------------------------------------------------------------
class FlakyLog(SQLiteLog):
    """Refuses the first `fail` appends (the bus is down): the outbox must retry them."""

    def __init__(self, path, fail: int) -> None:
        super().__init__(path)
        self.fail, self.calls = fail, 0

    async def publish(self, events):
        self.calls += 1
        if self.calls <= self.fail:
            raise OSError("bus down")
        await super().publish(events)


async def test_uploads_reach_the_counts_through_the_outbox_even_when_the_bus_fails_at_first(tmp_path):
    bus, counts = FlakyLog(tmp_path / "events.db", fail=3), SQLiteCounts(tmp_path / "counts.db")
    await bus.start()
    await counts.start()
    host = EntityHost("h0", MemoryStore(), {"devicegroup": DeviceGroupEntity}, Env(catalog=CAT),
                      dispatch=Publisher(bus).wrap(lambda cmd: None))
    await host.start()
    consumer = Consumer(bus, counts, "c", block_ms=20)
    task = asyncio.create_task(consumer.run())
    try:
        now = int(time.time() * 1000)
        evs = [{"event_id": f"x{i}", "device_id": "phone", "uri": turi(i % 5), "played_at_ms": now - 3_600_000 + i * 250_000,
                "ms_played": 60_000} for i in range(12)]
        reply, _ = await host.call(Command("devicegroup", "u1", "upload_events", {"events": evs}, Principal("u1")))
        assert reply["accepted"] == 12
        again, _ = await host.call(Command("devicegroup", "u1", "upload_events", {"events": evs}, Principal("u1")))
        assert again["duplicate"] == 12

        async def counted():
            got = await counts.stream_counts()
            return sum(n for d in got.values() for n in d.values()) == 12
        await eventually(counted, timeout=20, what="the 12 streams counted")
        assert bus.calls == 4                   # three refused appends, then the one that committed
        assert (await reconcile("", bus=bus, counts=counts))["differences"] == []
        assert json.loads(json.dumps(await counts.recently_played("u1", limit=50)))["total"] == 12
    finally:
        consumer.stop()
        await task
        await host.close(passivate=False)
        await bus.close()
        await counts.close()


async def test_a_malformed_publish_effect_is_refused_not_retried(tmp_path):
    from actors.devicegroup_events import EVENTBUS
    from actors.entity import SYSTEM
    from protocols.errors import ErrorCode
    bus = SQLiteLog(tmp_path / "events.db")
    await bus.start()
    try:
        pub = Publisher(bus)
        for cmd in (Command(EVENTBUS, "u1", "nope", {"events": []}, SYSTEM),
                    Command(EVENTBUS, "u1", "publish", {"events": "x"}, SYSTEM)):
            reply = await pub.publish(cmd)
            assert reply.error.code == ErrorCode.BAD_REQUEST and not reply.error.retryable
        assert await bus.backlog() == 0
        ok = await pub.publish(Command(EVENTBUS, "u1", "publish", {"events": [event("u1", 0, 1)]}, SYSTEM))
        assert ok.error is None and await bus.backlog() == 1
    finally:
        await bus.close()


def test_reconcile_of_a_data_dir_without_a_pipeline_says_so(tmp_path, capsys):
    from syncopate.cli import main
    assert main(["events", "reconcile", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "no event pipeline" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


async def test_a_users_erasure_keeps_the_counts_and_the_recount(pipe):
    """syncopate/events/erasure.py on each bus and counts store: the user's events anonymised (two
    events of one play stay one play), their short play gone, the bus without their entries, the
    other user untouched, a redelivery after it still a no-op, and the bus still delivers."""
    from gateway.erasure import ANONYMOUS
    from syncopate.events.erasure import PipelineErasure
    bus, counts = pipe
    evs = [event("u1", 0, 1), event("u1", 1, 2, play="u1/one"), event("u1", 2, 2, play="u1/one"),
           event("u1", 3, 4, stream=False), event("u2", 4, 1), event("u1x", 5, 1)]     # u1x: u1 is a prefix of it
    await bus.publish(evs)
    erasure = PipelineErasure(bus, counts, drain_timeout_s=0.2)
    with pytest.raises(SyncopateError) as early:              # nothing applied yet: refused, retryable
        await erasure.forget("u1", ANONYMOUS)
    assert early.value.retryable
    c = Consumer(bus, counts, "c1", block_ms=50)
    await c.drain()
    before = await counts.stream_counts()
    done = await erasure.forget("u1", ANONYMOUS)
    assert (done.events_anonymised, done.events_deleted, done.plays_anonymised) == (3, 1, 2)
    assert await counts.stream_counts() == before
    rep = await reconcile("", bus=bus, counts=counts)
    assert rep["differences"] == [] and rep["streams"] == 4, rep
    assert (await counts.recently_played("u1"))["total"] == 0
    assert (await counts.recently_played("u2"))["total"] == 1 and (await counts.recently_played("u1x"))["total"] == 1
    assert await counts.event_count() == 5
    # the SQLite log deletes the user's rows; the Redis stream is rebuilt without every entry up to the
    # watermark (all acknowledged: syncopate/events/stream_rebuild.py)
    assert await _bus_users(bus) == ({"u2", "u1x"} if isinstance(bus, SQLiteLog) else set())
    # a redelivered entry of another user is still a duplicate; a new one is counted
    await bus.publish([evs[4], event("u2", 6, 3)])
    await c.drain()
    assert sum(n for d in (await counts.stream_counts()).values() for n in d.values()) == 5
    assert (await reconcile("", bus=bus, counts=counts))["differences"] == []
    again = await erasure.forget("u1", ANONYMOUS)
    assert (again.events_anonymised, again.events_deleted, again.plays_anonymised) == (0, 0, 0)


async def _bus_users(bus) -> set:
    """The users of every entry still on the bus (SQLite: the log's rows; Redis: the stream)."""
    import msgpack
    if isinstance(bus, SQLiteLog):
        rows = await asyncio.to_thread(lambda: bus._db.execute("SELECT data FROM log").fetchall())
        return {msgpack.unpackb(d)["u"] for (d,) in rows}
    return {msgpack.unpackb(f[b"e"])["u"] for _, f in await bus._r.xrange(bus.stream)}


async def test_an_idle_sqlite_log_backs_off_its_looks_and_still_sees_other_writers(tmp_path):
    """The consumer's blocked read looks at the file for other processes' entries: 100 looks a
    second while the log stays empty cost measurable CPU, so empty looks back off to POLL_MAX_S; an
    entry written through another connection (as a host process writes) is still read, and the
    wait after it starts short again."""
    reader, writer = SQLiteLog(tmp_path / "events.db"), SQLiteLog(tmp_path / "events.db")
    await reader.start()
    await writer.start()
    try:
        assert await reader.read("c", 10, block_ms=1000) == []
        # POLL_S 0.01 doubling to 0.2: 0.01+0.02+0.04+0.08+0.16 = 0.31 s, then 0.2 s each: ~9 looks,
        # against ~100 at a fixed POLL_S
        assert 3 <= reader.looks <= 12
        assert reader._poll_s == SQLiteLog.POLL_MAX_S
        await writer.publish([event("u1", 0, 1)])          # no nudge reaches the reader: other "process"
        t0 = time.monotonic()
        got = await reader.read("c", 10, block_ms=5000)
        assert [d.event["u"] for d in got] == ["u1"]
        assert time.monotonic() - t0 < SQLiteLog.POLL_MAX_S + 1.0
        assert reader._poll_s == SQLiteLog.POLL_S
    finally:
        await reader.close()
        await writer.close()
