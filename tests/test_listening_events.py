"""Listening events in the device group (docs/events.md): offline batch upload, the validation of
each event with its reason, exactly once per play, the private session. On the real host
(tests/support/entities.py), so records, replays and effects are what the server commits."""
from __future__ import annotations

import msgpack
import pytest

from actors.devicegroup import DeviceGroupEntity
from actors.devicegroup_events import EVENTBUS
from actors.entity import Env, Principal
from protocols.errors import ErrorCode, SyncopateError
from protocols.listening import (
    FUTURE_SKEW_MS,
    MAX_AGE_MS,
    MAX_BATCH,
    MS_PLAYED_TOLERANCE_MS,
    OVERLAP_TOLERANCE_MS,
    PLAY_MATCH_MS,
    ListeningEvent,
)
from tests.support.catalog import CatalogBuilder, tid, turi
from tests.support.entities import EntityDriver, OnDriver

USER = "alice"
T0 = 1_767_000_000_000          # server time at the start of every test
DUR = 200_000                   # every track lasts 200 s (track 9: 20 s)


def _catalog():
    b = CatalogBuilder()
    b.artist("r" + "0" * 21, "Artist")
    b.album("a" + "0" * 21, ["r" + "0" * 21], "Album")
    for i in range(10):
        b.track(tid(i), "a" + "0" * 21, name=f"Song {i}", duration_ms=20_000 if i == 9 else DUR)
    return b.build()


CAT = _catalog()


def rt(x):
    return msgpack.unpackb(msgpack.packb(x, use_bin_type=True), raw=False, strict_map_key=False)


class G(OnDriver):
    def __init__(self) -> None:
        self.d = EntityDriver(DeviceGroupEntity, USER, Env(catalog=CAT), now_ms=T0)

    def do(self, op, product="premium", **args):
        return self.d.command(op, args, principal=Principal(USER, product))

    def upload(self, *events, product="premium"):
        return self.do("upload_events", product=product, events=list(events))

    def statuses(self, res):
        return [(r["status"], r.get("reason")) for r in res.reply["results"]]

    def published(self) -> list[ListeningEvent]:
        return [ListeningEvent.from_wire(w) for c in self.d.effects if c.kind == EVENTBUS for w in c.args["events"]]

    def check_replay(self):
        e2 = DeviceGroupEntity(USER, Env(catalog=CAT))
        for _, recs in self.d.entries():
            for r in recs:
                e2.apply(rt(r))
        assert rt(e2.snapshot()) == rt(self.e.snapshot())


def ev(eid, track=0, at=None, ms=60_000, device="phone", **kw):
    return {"event_id": eid, "device_id": device, "uri": turi(track),
            "played_at_ms": T0 - 3_600_000 if at is None else at, "ms_played": ms, **kw}


@pytest.fixture
def g():
    return G()


def test_a_batch_answers_every_event_with_its_own_outcome(g):
    h = T0 - 3_600_000
    res = g.upload(ev("a", 0, h), ev("b", 1, h + 200_000, context_uri="spotify:album:" + "a" + "0" * 21, market="SE"),
                   ev("c", 2, h + 400_000, ms=10_000))
    assert g.statuses(res) == [("accepted", None)] * 3
    assert (res.reply["accepted"], res.reply["duplicate"], res.reply["refused"]) == (3, 0, 0)
    assert [r["stream"] for r in res.reply["results"]] == [True, True, False]
    assert g.e.streams == {turi(0): 1, turi(1): 1}
    # one record, one effect to the pipeline with the three events (product and market recorded)
    assert len(res.records) == 1 and [c.kind for c in res.effects] == [EVENTBUS]
    pub = g.published()
    assert [(p.event_id, p.stream, p.product, p.market, p.source) for p in pub] == [
        ("a", True, "premium", None, "upload"), ("b", True, "premium", "SE", "upload"), ("c", False, "premium", None, "upload")]
    assert pub[1].context_uri == "spotify:album:" + "a" + "0" * 21 and pub[0].received_ms == T0
    assert [r[1] for r in g.e.recent] == [turi(0), turi(1)]         # streams only, in time order
    g.check_replay()


def test_bad_events_are_refused_one_by_one_and_change_nothing(g):
    h = T0 - 3_600_000
    before = rt(g.e.snapshot())
    res = g.upload(
        ev("unknown", at=h) | {"uri": "spotify:track:" + "z" * 22},
        ev("future", at=T0 + FUTURE_SKEW_MS + 1),
        ev("old", at=T0 - MAX_AGE_MS - 1),
        ev("long", 9, at=h, ms=20_000 + MS_PLAYED_TOLERANCE_MS + 1),
        ev("neg", at=h, ms=-5),
        {"event_id": "nofields"},
        ev("bad id!", at=h),
        ev("ctx", at=h, context_uri="spotify:track:" + tid(1)),
        ev("mk", at=h, market="sweden"),
        "not an object",
    )
    assert g.statuses(res) == [("refused", "unknown_track"), ("refused", "time_in_future"), ("refused", "time_too_old"),
                               ("refused", "ms_played_exceeds_duration"), ("refused", "invalid_event"),
                               ("refused", "invalid_event"), ("refused", "invalid_event"), ("refused", "invalid_event"),
                               ("refused", "invalid_event"), ("refused", "invalid_event")]
    assert all(r["message"] for r in res.reply["results"])
    assert res.reply["refused"] == 10 and res.records == [] and res.effects == []
    assert rt(g.e.snapshot()) == before


def test_the_tolerances_are_inclusive(g):
    res = g.upload(ev("skew", at=T0 + FUTURE_SKEW_MS), ev("age", 1, at=T0 - MAX_AGE_MS),
                   ev("dur", 9, at=T0 - 100_000, ms=20_000 + MS_PLAYED_TOLERANCE_MS))
    assert g.statuses(res) == [("accepted", None)] * 3


def test_a_good_event_among_bad_ones_is_accepted(g):
    res = g.upload(ev("bad", at=T0 + 10 * FUTURE_SKEW_MS), ev("good", 3))
    assert g.statuses(res) == [("refused", "time_in_future"), ("accepted", None)]
    assert [p.event_id for p in g.published()] == ["good"]


def test_a_malformed_batch_is_refused_whole():
    g = G()
    for events, code in ([], ErrorCode.INVALID_FIELD), ("x", ErrorCode.INVALID_FIELD), \
            ([ev(f"e{i}", at=T0 - 1_000_000 + i * 1000, ms=0) for i in range(MAX_BATCH + 1)], ErrorCode.LIMIT_EXCEEDED):
        with pytest.raises(SyncopateError) as ei:
            g.do("upload_events", events=events)
        assert ei.value.code == code
    assert g.d.entries() == []


def test_overlapping_plays_of_a_device_are_refused_within_the_batch_and_against_the_record(g):
    h = T0 - 3_600_000
    assert g.statuses(g.upload(ev("a", 0, h, ms=100_000))) == [("accepted", None)]
    res = g.upload(
        ev("b", 1, h + 50_000, ms=60_000),                                     # inside a: refused
        ev("c", 2, h + 100_000 - OVERLAP_TOLERANCE_MS, ms=60_000),             # touches a within tolerance
        ev("d", 3, h + 150_000, ms=60_000),                                    # overlaps c (same batch)
        ev("e", 4, h + 50_000, ms=60_000, device="laptop"),                    # another device: fine
    )
    assert g.statuses(res) == [("refused", "overlapping_play"), ("accepted", None), ("refused", "overlapping_play"),
                               ("accepted", None)]
    assert g.e.streams == {turi(0): 1, turi(2): 1, turi(4): 1}
    g.check_replay()


def test_forged_device_ids_cannot_stack_plays_at_the_same_time(g):
    h = T0 - 3_600_000
    res = g.upload(*[ev(f"x{i}", i, h + i * 1000, ms=100_000, device=f"dev{i}") for i in range(5)])
    assert g.statuses(res) == [("accepted", None)] * 3 + [("refused", "concurrent_plays")] * 2


def test_one_play_counts_once_whatever_the_event_ids_and_devices(g):
    h = T0 - 3_600_000
    first = g.upload(ev("p1", 0, h))
    pid = first.reply["results"][0]["play_id"]
    # a retry (same id), a re-upload with a fresh id and a skewed clock, the same play from another device
    res = g.upload(ev("p1", 0, h), ev("p1-again", 0, h + PLAY_MATCH_MS), ev("other-dev", 0, h - 2_000, device="laptop"))
    assert g.statuses(res) == [("duplicate", None)] * 3
    assert [r["play_id"] for r in res.reply["results"]] == [pid] * 3
    assert res.records == [] and res.effects == []
    assert g.e.streams == {turi(0): 1}
    # the same track started later is another play
    later = g.upload(ev("p2", 0, h + DUR))
    assert g.statuses(later) == [("accepted", None)] and g.e.streams == {turi(0): 2}


def test_a_short_report_then_a_longer_one_of_the_same_play_counts_once(g):
    h = T0 - 3_600_000
    assert g.statuses(g.upload(ev("s1", 0, h, ms=10_000))) == [("accepted", None)]
    assert g.e.streams == {}
    res = g.upload(ev("s2", 0, h + 1_000, ms=45_000))       # the same play, now a stream
    assert g.statuses(res) == [("accepted", None)] and g.e.streams == {turi(0): 1}
    assert g.statuses(g.upload(ev("s3", 0, h, ms=90_000))) == [("duplicate", None)]
    pub = g.published()
    assert len({p.play_id for p in pub}) == 1 and [p.stream for p in pub] == [False, True]
    g.check_replay()


def test_an_event_id_reused_for_another_play_is_refused(g):
    h = T0 - 3_600_000
    g.upload(ev("same", 0, h))
    assert g.statuses(g.upload(ev("same", 1, h + DUR))) == [("refused", "event_id_reused")]


def test_a_live_report_and_an_upload_of_the_same_play_count_once(g):
    g.do("register", device_id="phone", name="Phone")
    g.do("play", device_id="phone", uris=[turi(0)])
    g.d.now += 40_000
    live = g.do("progress", event_id="live1", device_id="phone", uri=turi(0), ms_played=40_000)
    assert live.reply["counted"] and g.e.streams == {turi(0): 1}
    # the device was offline-capable and uploads the same play from its own log afterwards
    res = g.upload(ev("offline1", 0, T0 + 1_000, ms=40_000))
    assert g.statuses(res) == [("duplicate", None)] and g.e.streams == {turi(0): 1}
    assert [(p.source, p.event_id) for p in g.published()] == [("live", "live1")]
    g.check_replay()


def test_a_live_report_longer_than_the_track_is_refused(g):
    g.do("register", device_id="phone", name="Phone")
    g.do("play", device_id="phone", uris=[turi(9)])
    with pytest.raises(SyncopateError) as ei:
        g.do("progress", event_id="x", device_id="phone", uri=turi(9), ms_played=20_000 + MS_PLAYED_TOLERANCE_MS + 1)
    assert ei.value.code == ErrorCode.BAD_REQUEST and ei.value.details["reason"] == "ms_played_exceeds_duration"


def test_the_play_index_survives_a_restart_and_forgets_after_the_age_bound(g):
    h = T0 - 3_600_000
    g.upload(ev("a", 0, h))
    g.d.restart()
    assert g.statuses(g.upload(ev("a2", 0, h))) == [("duplicate", None)]
    g.d.now = h + MAX_AGE_MS + PLAY_MATCH_MS + 1_000
    g.upload(ev("late", 1, g.d.now - 1_000))          # a record later than the bound prunes the old play
    assert all(p.start >= g.d.now - MAX_AGE_MS - PLAY_MATCH_MS for p in g.e.plays.plays())
    assert len(g.e.plays) == 1
    g.check_replay()


def test_private_session_plays_count_but_stay_out_of_recently_played(g):
    g.do("register", device_id="phone", name="Phone")
    res = g.do("private_session", enabled=True)
    assert res.reply == {"private_session": True}
    cl = res.events[-1].payload
    assert cl["devices"][0]["private_session"] is True
    h = T0 - 3_600_000
    g.upload(ev("priv", 0, h))
    g.do("play", device_id="phone", uris=[turi(1)])
    g.d.now += 35_000
    g.do("progress", event_id="live", device_id="phone", uri=turi(1), ms_played=35_000)
    assert g.e.streams == {turi(0): 1, turi(1): 1} and g.e.recent == []
    assert [p.private for p in g.published()] == [True, True]
    g.do("private_session", enabled=False)
    g.upload(ev("pub", 2, h + DUR))
    assert [r[1] for r in g.e.recent] == [turi(2)]
    # an event the client recorded in a private session stays private after it ended
    g.upload(ev("was-private", 3, h + 2 * DUR, private=True))
    assert [r[1] for r in g.e.recent] == [turi(2)] and g.published()[-1].private
    g.check_replay()


def test_a_free_user_may_upload_and_the_product_is_recorded(g):
    g.upload(ev("f", 0), product="free")
    assert g.published()[0].product == "free"


def test_another_user_cannot_upload_into_my_device_group(g):
    with pytest.raises(SyncopateError) as ei:
        g.d.command("upload_events", {"events": [ev("x")]}, principal=Principal("mallory"))
    assert ei.value.code == ErrorCode.FORBIDDEN


def test_the_play_limit_refuses_new_plays_but_still_answers_duplicates(g, monkeypatch):
    import actors.devicegroup_events as dge
    monkeypatch.setattr(dge, "MAX_PLAYS_KEPT", 3)
    h = T0 - 3_600_000
    res = g.upload(*[ev(f"l{i}", i, h + i * DUR) for i in range(4)], ev("l0-again", 0, h))
    assert g.statuses(res) == [("accepted", None)] * 3 + [("refused", "play_limit"), ("duplicate", None)]


def test_a_snapshot_keeps_the_plays_and_the_private_session(g):
    h = T0 - 3_600_000
    g.do("private_session", enabled=True)
    g.upload(ev("a", 0, h), ev("b", 1, h + DUR, ms=10_000))
    e2 = DeviceGroupEntity(USER, Env(catalog=CAT))
    e2.restore(rt(g.e.snapshot()))
    assert rt(e2.snapshot()) == rt(g.e.snapshot())
    assert e2.p["private_session"] and e2.plays.match(turi(0), h + 1_000).play_id == g.e.plays.match(turi(0), h).play_id
    assert e2.plays.overlapping(h + 10_000, h + 20_000, "phone")       # the device's interval is known again
