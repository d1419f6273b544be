"""The device group's play index (actors/devicegroup_plays.py): compact enough to keep 30 days of
plays resident, and answering as the object-per-play index did (match, overlaps, event ids, prune,
snapshot in both forms)."""
from __future__ import annotations

import gc
import tracemalloc

import msgpack

from actors.devicegroup_plays import Play, PlayIndex, event_digest
from protocols.listening import MAX_AGE_MS, PLAY_MATCH_MS

T0 = 1_764_590_000_000


def _play(i: int, start: int, device: str = "phone", ms: int = 200_000) -> Play:
    return Play(f"u/{start}/ev-{i:08d}-0000-0000-000000000000", f"spotify:track:{i % 50:022d}", device, start, ms,
                True, False)


def _filled(n: int, gap_ms: int = 210_000) -> PlayIndex:
    ix = PlayIndex()
    for i in range(n):
        p = _play(i, T0 + i * gap_ms)
        ix.add(p, [p.play_id.rsplit("/", 1)[1]])
    return ix


def _resident(build, n: int):
    """What `build()` returns, and the bytes it holds alive per item (tracemalloc, after a collection)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out = build()
        gc.collect()
        return out, (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()


def test_a_play_costs_under_150_bytes_resident():
    """~970 bytes a play when each was an object with its event id strings (bench_retention), ~190
    with the play id a string."""
    ids = [f"u/{T0 + i * 210_000}/ev-{i:08d}-0000-0000-000000000000" for i in range(5000)]   # the caller's strings
    ix, per_play = _resident(lambda: _filled(5000), 5000)
    assert len(ix) == 5000 and ids
    print(f"{per_play:.0f} bytes a play")
    assert per_play < 150, per_play


def test_queries_answer_by_track_device_interval_and_event_id():
    ix = PlayIndex()
    a = Play("u/1000/a", "spotify:track:x", "phone", 1000, 60_000, True, False)
    b = Play("u/70000/b", "spotify:track:y", "laptop", 70_000, 30_000, False, True)
    ix.add(a, ["a"])
    ix.add(b, ["b"])
    assert ix.match("spotify:track:x", 1000 + PLAY_MATCH_MS).play_id == "u/1000/a"
    assert ix.match("spotify:track:x", 1000 + PLAY_MATCH_MS + 1) is None
    assert ix.match("spotify:track:y", 1000) is None
    assert [p.play_id for p in ix.overlapping(50_000, 80_000)] == ["u/1000/a", "u/70000/b"]
    assert [p.play_id for p in ix.overlapping(50_000, 80_000, "laptop")] == ["u/70000/b"]
    assert ix.overlapping(50_000, 80_000, "phone", exclude="u/1000/a") == []
    assert ix.play_of_event("a") == "u/1000/a" and ix.play_of_event("c") is None
    p = ix.extend("u/70000/b", "b2", 40_000, True, 70_000)
    assert p.stream and p.ms == 40_000 and ix.play_of_event("b2") == "u/70000/b"
    assert ix.get("u/70000/b").stream and ix.get("u/70000/b", 70_000).ms == 40_000
    assert ix.get("u/70000/b", 1000) is None


def test_the_nearest_match_and_of_two_as_near_the_first_recorded():
    ix = PlayIndex()
    ix.add(Play("u/10000/late", "t", "d1", 10_000, 1000, True, False), ["late"])
    ix.add(Play("u/4000/early", "t", "d2", 4000, 1000, True, False), ["early"])
    assert ix.match("t", 7000).play_id == "u/10000/late"      # 3 s from both: recorded first
    assert ix.match("t", 6000).play_id == "u/4000/early"      # nearer


def test_prune_forgets_old_plays_and_their_event_ids():
    ix = _filled(400, gap_ms=86_400_000 // 10)            # 10 plays a day for 40 days
    now = T0 + 400 * (86_400_000 // 10)
    ix.prune(now)
    cutoff = now - MAX_AGE_MS - PLAY_MATCH_MS
    kept = ix.plays()
    assert kept and all(p.start >= cutoff for p in kept) and len(kept) < 400
    first_kept = int(kept[0].play_id.split("/")[2].split("-")[1])
    assert ix.play_of_event(f"ev-{first_kept - 1:08d}-0000-0000-000000000000") is None
    assert ix.play_of_event(f"ev-{first_kept:08d}-0000-0000-000000000000") == kept[0].play_id
    assert len(ix._ev_seq) <= 2 * len(kept) + 64         # the digests of pruned plays are compacted away


def test_the_snapshot_round_trips_through_msgpack_and_reads_the_old_form():
    ix = _filled(20)
    ix.extend(ix.plays()[3].play_id, "extra", 1, False)
    wire = msgpack.unpackb(msgpack.packb(ix.to_wire(), use_bin_type=True), raw=False)
    back = PlayIndex.from_wire(wire)
    assert back.plays() == ix.plays()
    assert back.play_of_event("extra") == ix.plays()[3].play_id
    assert wire[3][7] == [event_digest("ev-00000003-0000-0000-000000000000"), event_digest("extra")]
    old = [["u/5/e1", "t", "d", 5, 100, True, False, ["e1", "e2"]]]     # before the digests
    ox = PlayIndex.from_wire(old)
    assert ox.play_of_event("e2") == "u/5/e1" and ox.play_of_event("e3") is None


def _uuid_filled(n: int, owner: str = "user-17", hyphens: bool = False) -> tuple[PlayIndex, list[Play]]:
    import uuid
    ix, plays = PlayIndex(owner), []
    for i in range(n):
        eid = str(uuid.UUID(int=i * 7919 + 1)) if hyphens else uuid.UUID(int=i * 7919 + 1).hex
        start = T0 + i * 210_000
        p = Play(f"{owner}/{start}/{eid}", f"spotify:track:{i % 50:022d}", "phone", start, 200_000, True, False)
        ix.add(p, [eid])
        plays.append(p)
    return ix, plays


def test_a_play_with_a_uuid_event_id_costs_under_130_bytes_resident():
    """Clients make event ids as UUIDs (hex in the mixed scenario, hyphenated in docs/listening.md):
    the play id is packed to 17 bytes then; ~190 bytes a play when ids were strings."""
    def build() -> PlayIndex:
        ix = PlayIndex("user-17")
        for i in range(5000):
            start = T0 + i * 210_000
            eid = f"{i:032x}"
            ix.add(Play(f"user-17/{start}/{eid}", f"spotify:track:{i % 50:022d}", "phone", start, 200_000,
                        True, False), [eid])
        return ix

    ix, per_play = _resident(build, 5000)
    print(f"{per_play:.0f} bytes a play")
    assert len(ix) == 5000 and per_play < 130, per_play


def test_every_play_id_unpacks_to_its_own_text():
    import uuid
    u = uuid.UUID(int=12345)
    starts = [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4, T0 + 5, T0 + 6, T0 + 7]
    ids = [f"user-17/{T0}/{u.hex}",                     # hex uuid: 16 bytes
           f"user-17/{T0 + 1}/{u}",                      # hyphenated uuid: 16 bytes
           f"user-17/{T0 + 2}/{u.hex.upper()}",          # not the canonical text: kept as text
           f"user-17/{T0 + 3}/{{{u}}}",                  # braces: UUID() takes it, the text differs
           f"user-17/{T0 + 4}/short",                    # any event id
           f"other/{T0 + 5}/{u.hex}",                    # another owner: whole
           f"user-17/{T0 + 999}/{u.hex}",                # a start that is not the play's: whole
           "no-slashes"]
    ix = PlayIndex("user-17")
    for i, (pid, st) in enumerate(zip(ids, starts)):
        ix.add(Play(pid, "spotify:track:" + "a" * 22, "d", st, 1000, False, False), [f"e{i}"])
    assert [p.play_id for p in ix.plays()] == ids
    for i, (pid, st) in enumerate(zip(ids, starts)):
        assert ix.get(pid, st).play_id == pid and ix.get(pid).play_id == pid
        assert ix.play_of_event(f"e{i}") == pid
    assert ix.get(f"user-17/{T0}/{uuid.UUID(int=1).hex}", T0) is None     # same start, other id
    assert ix._packed(0)[0] == 3 and len(ix._packed(0)) == 17 and ix._packed(1)[0] == 2
    back = PlayIndex.from_wire(msgpack.unpackb(msgpack.packb(ix.to_wire(), use_bin_type=True), raw=False))
    assert [p.play_id for p in back.plays()] == ids       # the owner is learned from the first id


def test_pruning_many_plays_keeps_the_packed_ids_of_the_rest():
    ix, plays = _uuid_filled(3000, hyphens=True)
    ix.prune(plays[2500].start + MAX_AGE_MS + PLAY_MATCH_MS)        # drops the first 2,500
    assert [p.play_id for p in ix.plays()] == [p.play_id for p in plays[2500:]]
    assert ix._id_lo == 0 and len(ix._idb) == 500 * 17      # the dropped ids' bytes are gone
    p = plays[2700]
    assert ix.get(p.play_id, p.start).play_id == p.play_id
    assert ix.overlapping(p.start, p.end, "phone", exclude=p.play_id) == []
