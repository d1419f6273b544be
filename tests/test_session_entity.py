"""SessionEntity (actors/session.py) and the library structure (actors/library.py), alone and on
the real EntityHost: presence, sign-out, heartbeat expiry, resume, library semantics, paging,
playlist follow effects, replay, 100k likes."""
from __future__ import annotations

import asyncio
import random
import sys
import tracemalloc
import time

import msgpack
import pytest

from actors.entity import SYSTEM, Command, Env, Principal
from actors.library import Collection, Library
from actors.session import CHANGE_LOG_ITEMS, CONNECTION_TIMEOUT_MS, MAX_URIS, SessionEntity
from protocols.errors import ErrorCode, SyncopateError
from protocols.uris import BASE62
from tests.support.catalog import catalog_with
from tests.support.entities import EntityDriver, OnDriver

USER = "alice"
ALICE = Principal(USER, device_id="phone")
ALICE_FREE = Principal(USER, product="free", device_id="laptop")
BOB = Principal("bob")
T0 = 1_700_000_000_000


def make_id(rng: random.Random) -> str:
    return "".join(rng.choice(BASE62) for _ in range(22))


_rng = random.Random(7)
TRACKS = [make_id(_rng) for _ in range(300)]
ALBUMS = [make_id(_rng) for _ in range(20)]
ARTISTS = [make_id(_rng) for _ in range(40)]
PLAYLISTS = [make_id(_rng) for _ in range(10)]
UNKNOWN = make_id(_rng)
CATALOG = catalog_with(TRACKS, ALBUMS, ARTISTS)


def turi(i):
    return f"spotify:track:{TRACKS[i]}"


class Harness(OnDriver):
    """The session on the real EntityHost (tests/support/entities.py) with a controlled clock; `run`
    returns what the host released for the command, `entries` what it committed."""

    def __init__(self, catalog=CATALOG, now=T0):
        self.env = Env(catalog=catalog)
        self.d = EntityDriver(SessionEntity, USER, self.env, now_ms=now)

    @property
    def entries(self) -> list[tuple[int, list]]:
        return self.d.entries()

    @staticmethod
    def _check(out):
        if out is not None and out.records:
            assert out.records[0]["version"] == out.version      # records carry their version
        return out

    def run(self, op, args=None, principal=ALICE, origin=None):
        return self._check(self.d.command(op, args, principal=principal, origin=origin))

    def reply(self, op, args=None, principal=ALICE, origin=None):
        return self.run(op, args, principal, origin).reply

    def tick(self):
        return self._check(self.d.tick())

    def connect(self, conn, device_id, client="app", **kw):
        gw = conn.split("/")[0]
        return self.run("connect", {"conn": conn, "device_id": device_id, "client": client,
                                    "gateway": gw, **kw}, SYSTEM)

    def replay(self, snapshot_at: int = 0, snapshot=None) -> SessionEntity:
        """A fresh entity from (an optional snapshot at version snapshot_at) + the later entries."""
        e = SessionEntity(USER, self.env)
        if snapshot is not None:
            e.restore(msgpack.unpackb(msgpack.packb(snapshot, use_bin_type=True), raw=False))
            e.version = snapshot_at
        for v, recs in self.entries:
            if v > snapshot_at:
                for r in msgpack.unpackb(msgpack.packb(recs, use_bin_type=True), raw=False):
                    e.apply(r)
                e.version = v
        return e


def refused(code, fn, *a, **kw):
    with pytest.raises(SyncopateError) as ei:
        fn(*a, **kw)
    assert ei.value.code == code, ei.value
    return ei.value


def norm(snap):
    return msgpack.packb(snap, use_bin_type=True)


# ================================================================================================
# presence
# ================================================================================================
def test_presence_lifecycle():
    h = Harness()
    assert h.e.idle()
    out = h.connect("gw1/c1", "phone", "app")
    assert out.records and h.e.version == 1
    ev, = out.events
    assert ev.type == "session.changed" and ev.user == USER and ev.conn is None and not ev.close
    assert ev.payload["reason"] == "connected" and ev.payload["conns"] == ["gw1/c1"]
    h.now += 1000
    h.connect("gw2/c7", "laptop", "app")
    h.connect("gw2/c8", "kitchen", "speaker")
    assert not h.e.idle()

    conns = h.reply("list_connections", origin=("gw2", "c7"))["connections"]
    assert [(c["conn"], c["device_id"], c["client"], c["gateway"]) for c in conns] == [
        ("gw1/c1", "phone", "app", "gw1"), ("gw2/c7", "laptop", "app", "gw2"),
        ("gw2/c8", "kitchen", "speaker", "gw2")]
    assert conns[0]["connected_since"] == T0 and conns[1]["connected_since"] == T0 + 1000
    assert [c["current"] for c in conns] == [False, True, False]

    # a repeated connect of the same connection is a heartbeat: no record, no push
    h.now += 500
    out = h.connect("gw1/c1", "phone", "app")
    assert not out.records and not out.events
    assert h.reply("list_connections")["connections"][0]["last_seen"] == T0 + 1500

    out = h.run("disconnect", {"conn": "gw2/c8"}, SYSTEM)
    assert out.reply == {"removed": True}
    assert out.events[0].payload["reason"] == "disconnected"
    assert [c["conn"] for c in out.events[0].payload["connections"]] == ["gw1/c1", "gw2/c7"]
    # disconnecting an unknown connection: nothing happens
    out = h.run("disconnect", {"conn": "gw2/c8"}, SYSTEM)
    assert out.reply == {"removed": False} and not out.records
    h.run("disconnect", {"conn": "gw1/c1"}, SYSTEM)
    h.run("disconnect", {"conn": "gw2/c7"}, SYSTEM)
    assert h.e.idle() and h.reply("list_connections")["connections"] == []


def test_presence_ops_are_system_only_and_users_see_only_their_own():
    h = Harness()
    refused(ErrorCode.FORBIDDEN, h.run, "connect", {"conn": "g/c", "device_id": "d"}, ALICE)
    refused(ErrorCode.FORBIDDEN, h.run, "heartbeat", {"conn": "g/c"}, ALICE)
    refused(ErrorCode.FORBIDDEN, h.run, "library_follow_playlist", {"playlist_id": PLAYLISTS[0]}, ALICE)
    for op, args in [("list_connections", {}), ("library_list", {"type": "track"}),
                     ("library_save", {"uris": [turi(0)]}), ("end_connection", {"device_id": "phone"}),
                     ("resume", {"since": 0}), ("check_device", {"device_id": "x"}), ("subscribe", {})]:
        refused(ErrorCode.FORBIDDEN, h.run, op, args, BOB)
    refused(ErrorCode.UNKNOWN_MESSAGE_TYPE, h.run, "nope", {}, ALICE)
    refused(ErrorCode.INVALID_FIELD, h.run, "connect", {"device_id": "d"}, SYSTEM)
    assert h.e.version == 0


def test_heartbeat_expiry_with_a_controlled_clock():
    h = Harness()
    h.connect("gw1/c1", "phone")
    h.connect("gw1/c2", "laptop")
    assert SessionEntity.tick_ms and SessionEntity.tick_ms < CONNECTION_TIMEOUT_MS
    for _ in range(6):                                   # phone heartbeats every 15 s, laptop is silent
        h.now += 15_000
        assert h.reply("heartbeat", {"conn": "gw1/c1"}, SYSTEM) == {"known": True}
        out = h.tick()
        if out is not None:
            break
    assert out is not None and h.now - T0 > CONNECTION_TIMEOUT_MS
    assert out.records[0]["type"] == "disconnected" and out.records[0]["reason"] == "timeout"
    ev, = out.events
    assert ev.payload["reason"] == "timeout" and ev.payload["conns"] == ["gw1/c2"]
    assert ev.payload["device_id"] == "laptop"
    assert [c["conn"] for c in h.reply("list_connections")["connections"]] == ["gw1/c1"]
    # the expired connection's next heartbeat learns it is unknown (the gateway re-sends connect)
    assert h.reply("heartbeat", {"conn": "gw1/c2"}, SYSTEM) == {"known": False}
    # nothing more to expire while the phone keeps beating
    h.now += 10_000
    assert h.tick() is None
    h.now += CONNECTION_TIMEOUT_MS + 1
    h.tick()
    assert h.e.idle()


def test_restored_connections_get_a_grace_period():
    h = Harness()
    h.connect("gw1/c1", "phone")
    h.now += 10 * CONNECTION_TIMEOUT_MS                  # e.g. the host was down for a while
    e = h.replay()
    assert not e.idle()
    assert e.tick(h.now) is None                         # not expired at once: time to heartbeat
    out = e.tick(h.now + CONNECTION_TIMEOUT_MS + 1)
    assert out is not None and out.events[0].payload["reason"] == "timeout"


# ================================================================================================
# sign-out
# ================================================================================================
def test_sign_out_closes_connections_revokes_and_refuses_reconnect():
    h = Harness()
    h.connect("gw1/c1", "laptop")
    h.connect("gw2/c2", "laptop", "yjs")
    h.connect("gw2/c3", "phone")
    out = h.run("end_connection", {"device_id": "laptop"}, ALICE)
    assert out.reply["closed"] == 2 and out.reply["device_id"] == "laptop"
    ended = [e for e in out.events if e.type == "session.ended"]
    assert sorted(str(e.conn) for e in ended) == ["gw1/c1", "gw2/c2"]
    assert all(e.close and e.payload["device_id"] == "laptop" and e.payload["by_device"] == "phone"
               for e in ended)
    changed, = [e for e in out.events if e.type == "session.changed"]
    assert changed.payload["reason"] == "signed_out" and changed.user == USER and changed.conn is None
    assert [c["conn"] for c in changed.payload["connections"]] == ["gw2/c3"]
    assert out.events[0] is changed                      # session.ended is the last frame they get

    assert h.reply("check_device", {"device_id": "laptop"}, SYSTEM)["revoked"] is True
    assert h.reply("check_device", {"device_id": "phone"}, SYSTEM)["revoked"] is False
    before = norm(h.e.snapshot())
    err = refused(ErrorCode.SESSION_ENDED, h.connect, "gw1/c9", "laptop")
    assert err.status == 401
    assert norm(h.e.snapshot()) == before
    # a token minted by a new sign-in (iat after the revocation) is accepted again
    later = (h.now // 1000) + 1
    assert h.reply("check_device", {"device_id": "laptop", "iat": later}, SYSTEM)["revoked"] is False
    assert h.reply("check_device", {"device_id": "laptop", "iat": later - 5}, SYSTEM)["revoked"] is True
    assert h.connect("gw1/c9", "laptop", iat=later).records
    # revocation survives replay
    assert h.replay().revoked == {"laptop": T0}


def test_sign_out_of_an_offline_device_still_revokes():
    h = Harness()
    out = h.run("end_connection", {"device_id": "old-tablet"})
    assert out.reply["closed"] == 0 and out.records
    assert [e.type for e in out.events] == ["session.changed"]
    refused(ErrorCode.SESSION_ENDED, h.connect, "gw1/c1", "old-tablet")


# ================================================================================================
# library semantics
# ================================================================================================
@pytest.mark.parametrize("kind,ids", [("track", TRACKS), ("album", ALBUMS), ("artist", ARTISTS)])
def test_save_is_idempotent_remove_absent_is_fine_unknown_refuses_whole(kind, ids):
    h = Harness()
    uris = [f"spotify:{kind}:{i}" for i in ids[:3]]
    out = h.run("library_save", {"uris": uris[:2]})
    assert out.reply == {"changed": True, "library_version": 1}
    ev, = out.events
    assert ev.type == "library.changed" and ev.user == USER and ev.conn is None
    assert ev.payload == {"library_version": 1, "changes": [
        {"op": "save", "uri": uris[0], "added_at": T0}, {"op": "save", "uri": uris[1], "added_at": T0}]}
    h.now += 5000
    out = h.run("library_save", {"uris": [uris[0], uris[2], uris[2]]})   # one already saved, one twice
    assert out.events[0].payload["changes"] == [{"op": "save", "uri": uris[2], "added_at": T0 + 5000}]
    assert h.reply("library_list", {"type": kind})["total"] == 3
    # saving again: nothing changes, no version, no push
    out = h.run("library_save", {"uris": uris})
    assert out.reply == {"changed": False, "library_version": 2} and not out.records and not out.events
    # first added_at kept
    items = {i["uri"]: i["added_at"] for i in h.reply("library_list", {"type": kind})["items"]}
    assert items[uris[0]] == T0
    assert h.reply("library_contains", {"uris": [uris[0], f"spotify:{kind}:{ids[10]}"]}) == [True, False]

    # an unknown or malformed id refuses the whole call and changes nothing
    before = norm(h.e.snapshot())
    v = h.e.version
    unknown = f"spotify:{kind}:{UNKNOWN}"
    err = refused(ErrorCode.UNKNOWN_URI, h.run, "library_save", {"uris": [f"spotify:{kind}:{ids[5]}", unknown]})
    assert unknown in err.message and err.status == 400
    refused(ErrorCode.INVALID_URI, h.run, "library_save", {"uris": [f"spotify:{kind}:{ids[5]}", "spotify:track:nope"]})
    refused(ErrorCode.UNKNOWN_URI, h.run, "library_remove", {"uris": [uris[0], unknown]})
    assert norm(h.e.snapshot()) == before and h.e.version == v

    # removing an absent (known) item is not an error and changes nothing
    out = h.run("library_remove", {"uris": [f"spotify:{kind}:{ids[9]}"]})
    assert out.reply["changed"] is False and not out.records and not out.events
    out = h.run("library_remove", {"uris": [uris[0], f"spotify:{kind}:{ids[9]}"]})
    assert out.events[0].payload["changes"] == [{"op": "remove", "uri": uris[0], "added_at": None}]
    assert h.reply("library_contains", {"uris": uris}) == [False, True, True]


def test_saved_items_can_be_removed_even_if_the_catalog_forgot_them():
    h = Harness(catalog=catalog_with([UNKNOWN]))
    h.run("library_save", {"uris": [f"spotify:track:{UNKNOWN}"]})
    h.e.env.catalog = catalog_with()                     # the catalog no longer knows it
    assert h.run("library_remove", {"uris": [f"spotify:track:{UNKNOWN}"]}).reply["changed"] is True


def test_argument_validation():
    h = Harness()
    refused(ErrorCode.BAD_REQUEST, h.run, "library_save", {"uris": []})
    refused(ErrorCode.INVALID_FIELD, h.run, "library_save", {})
    refused(ErrorCode.INVALID_FIELD, h.run, "library_save", {"uris": 5})
    refused(ErrorCode.BAD_REQUEST, h.run, "library_save", {"uris": [turi(i) for i in range(MAX_URIS + 1)]})
    assert h.run("library_save", {"uris": [turi(i) for i in range(MAX_URIS)]}).reply["changed"]
    for bad in ["spotify:episode:" + "a" * 22, "spotify:show:" + "a" * 22, "spotify:user:bob"]:
        err = refused(ErrorCode.BAD_REQUEST, h.run, "library_save", {"uris": [bad]})
        assert "unsupported type" in err.message
    refused(ErrorCode.INVALID_URI, h.run, "library_contains", {"uris": ["track:123"]})
    refused(ErrorCode.INVALID_FIELD, h.run, "library_list", {"type": "song"})
    refused(ErrorCode.BAD_REQUEST, h.run, "library_list", {"type": "episode"})
    # out of range is BAD_REQUEST, a wrong type INVALID_FIELD, as in every entity (actors/args.py)
    refused(ErrorCode.BAD_REQUEST, h.run, "library_list", {"type": "track", "limit": 51})
    refused(ErrorCode.BAD_REQUEST, h.run, "library_list", {"type": "track", "limit": 0})
    refused(ErrorCode.BAD_REQUEST, h.run, "library_list", {"type": "track", "offset": -1})
    refused(ErrorCode.INVALID_FIELD, h.run, "library_list", {"type": "track", "limit": "many"})
    refused(ErrorCode.BAD_REQUEST, h.run, "library_list", {"type": "track", "after": TRACKS[0]})
    refused(ErrorCode.INVALID_FIELD, h.run, "resume", {"since": "x"})
    # ids + type (the classic typed endpoints) and comma-separated strings are accepted too
    assert h.reply("library_contains", {"type": "track", "ids": [TRACKS[0], TRACKS[299]]}) == [True, False]
    assert h.reply("library_contains", {"uris": f"{turi(1)},{turi(298)}"}) == [True, False]
    refused(ErrorCode.INVALID_URI, h.run, "library_contains", {"type": "track", "ids": ["short"]})


def test_free_or_premium_makes_no_difference():
    h = Harness()
    assert h.run("library_save", {"uris": [turi(0)]}, ALICE_FREE).reply["changed"]
    assert h.reply("library_contains", {"uris": [turi(0)]}, ALICE_FREE) == [True]


# ================================================================================================
# paging
# ================================================================================================
def test_tracks_and_albums_page_newest_first():
    h = Harness()
    for i in range(45):
        h.now += 1000
        h.run("library_save", {"uris": [turi(i)]})
    page = h.reply("library_list", {"type": "track", "limit": 20})
    assert [it["id"] for it in page["items"]] == [TRACKS[i] for i in range(44, 24, -1)]
    assert page["total"] == 45 and page["offset"] == 0 and page["next_offset"] == 20
    assert page["items"][0]["uri"] == turi(44) and page["items"][0]["added_at"] == T0 + 45_000
    last = h.reply("library_list", {"type": "track", "offset": 40, "limit": 20})
    assert [it["id"] for it in last["items"]] == [TRACKS[i] for i in range(4, -1, -1)]
    assert last["next_offset"] is None
    assert h.reply("library_list", {"type": "track", "offset": 45})["items"] == []
    # plural names as the REST paths have them
    assert h.reply("library_list", {"type": "tracks", "limit": 1})["items"][0]["id"] == TRACKS[44]

    # a clock that went backwards (host moved) never reorders: added_at never decreases
    h.now -= 60_000
    h.run("library_save", {"uris": [turi(100)]})
    first = h.reply("library_list", {"type": "track", "limit": 1})["items"][0]
    assert first["id"] == TRACKS[100] and first["added_at"] == T0 + 45_000

    for i in range(5):
        h.now += 10
        h.run("library_save", {"uris": [f"spotify:album:{ALBUMS[i]}"]})
    assert [it["id"] for it in h.reply("library_list", {"type": "album", "limit": 3, "offset": 1})["items"]] == \
        [ALBUMS[3], ALBUMS[2], ALBUMS[1]]


def test_followed_artists_page_with_a_cursor():
    h = Harness()
    h.run("library_save", {"uris": [f"spotify:artist:{a}" for a in ARTISTS[:25]]})
    order = sorted(ARTISTS[:25])
    seen, after = [], None
    while True:
        args = {"type": "artist", "limit": 10}
        if after:
            args["after"] = after
        page = h.reply("library_list", args)
        assert page["total"] == 25
        seen += [it["id"] for it in page["items"]]
        after = page["cursors"]["after"]
        if after is None:
            break
        assert after == page["items"][-1]["id"]
    assert seen == order
    # the cursor survives the removal of the artist it names
    page1 = h.reply("library_list", {"type": "artist", "limit": 5})
    cursor = page1["cursors"]["after"]
    h.run("library_remove", {"uris": [f"spotify:artist:{cursor}"]})
    page2 = h.reply("library_list", {"type": "artist", "limit": 5, "after": cursor})
    assert [it["id"] for it in page2["items"]] == order[5:10]


def test_playlists_owned_and_followed_newest_first():
    h = Harness()
    h.run("playlist_created", {"playlist_id": PLAYLISTS[0]}, SYSTEM)
    h.now += 1
    h.run("library_follow_playlist", {"playlist_id": PLAYLISTS[1]}, SYSTEM)
    h.now += 1
    h.run("library_save", {"uris": [f"spotify:playlist:{PLAYLISTS[2]}"]})
    h.now += 1
    h.run("playlist_created", {"playlist_id": PLAYLISTS[3]}, SYSTEM)
    page = h.reply("library_list", {"type": "playlist"})
    assert [it["id"] for it in page["items"]] == [PLAYLISTS[3], PLAYLISTS[2], PLAYLISTS[1], PLAYLISTS[0]]
    assert page["total"] == 4


# ================================================================================================
# playlist follow effects
# ================================================================================================
def test_following_a_playlist_from_the_library_tells_the_playlist_entity_without_loops():
    h = Harness()
    pl = f"spotify:playlist:{PLAYLISTS[0]}"
    out = h.run("library_save", {"uris": [pl, turi(0)]})
    eff, = out.effects
    assert (eff.kind, eff.entity_id, eff.op, eff.principal) == ("playlist", PLAYLISTS[0], "follow", ALICE)
    assert eff.op_id                                     # a retried effect is applied once
    v = h.e.version
    # the playlist entity's follow effect comes back: already saved, nothing happens
    out = h.run("library_follow_playlist", {"playlist_id": PLAYLISTS[0]}, SYSTEM)
    assert out.reply["changed"] is False and not out.records and not out.events and not out.effects
    assert h.e.version == v
    # saving it again from the library: no second follow
    assert not h.run("library_save", {"uris": [pl]}).effects

    out = h.run("library_remove", {"uris": [pl]})
    eff, = out.effects
    assert eff.op == "unfollow" and eff.entity_id == PLAYLISTS[0]
    out = h.run("library_unfollow_playlist", {"playlist_id": PLAYLISTS[0]}, SYSTEM)
    assert not out.records and not out.effects


def test_follow_from_the_playlist_side_updates_the_library_and_pushes_without_effects():
    h = Harness()
    out = h.run("library_follow_playlist", {"playlist_id": PLAYLISTS[4]}, SYSTEM)
    assert out.records and not out.effects
    assert out.events[0].payload["changes"][0]["uri"] == f"spotify:playlist:{PLAYLISTS[4]}"
    assert h.reply("library_contains", {"uris": [f"spotify:playlist:{PLAYLISTS[4]}"]}) == [True]
    out = h.run("library_unfollow_playlist", {"id": f"spotify:playlist:{PLAYLISTS[4]}"}, SYSTEM)
    assert out.records and not out.effects and out.events[0].payload["changes"][0]["op"] == "remove"
    refused(ErrorCode.INVALID_URI, h.run, "library_follow_playlist", {"playlist_id": "x"}, SYSTEM)


# ================================================================================================
# resume
# ================================================================================================
def test_resume_small_gap_gives_the_changes_large_gap_the_full_state():
    h = Harness()
    h.connect("gw1/c1", "phone")
    h.run("library_save", {"uris": [turi(0)]})
    seen = h.e.version
    h.run("library_save", {"uris": [turi(1), turi(2)]})
    h.connect("gw1/c2", "laptop")
    h.run("library_remove", {"uris": [turi(0)]})
    r = h.reply("resume", {"since": seen})
    assert r["full"] is False and r["version"] == h.e.version
    assert [e["library_version"] for e in r["library"]] == [seen + 1, seen + 3]
    assert [(c["op"], c["uri"]) for e in r["library"] for c in e["changes"]] == \
        [("save", turi(1)), ("save", turi(2)), ("remove", turi(0))]
    assert [c["conn"] for c in r["connections"]] == ["gw1/c1", "gw1/c2"]
    assert h.reply("resume", {"since": h.e.version})["library"] == []

    # overflow the bounded log: an old version gets the full state
    n = 0
    while h.e.log.floor <= seen:
        h.run("library_save", {"uris": [turi(3 + n % 250)]})
        h.run("library_remove", {"uris": [turi(3 + n % 250)]})
        n += 1
    assert h.e.log.items <= CHANGE_LOG_ITEMS
    r = h.reply("resume", {"since": seen})
    assert r["full"] is True and r["version"] == h.e.version
    assert r["library"]["track"]["total"] == 2
    assert {i["id"] for i in r["library"]["track"]["items"]} == {TRACKS[1], TRACKS[2]}
    assert r["library"]["album"] == {"total": 0, "items": []}
    # a version from the future is answered with the full state too
    assert h.reply("resume", {"since": h.e.version + 10})["full"] is True
    # subscribe with since answers like resume
    assert h.reply("subscribe", {"since": h.e.version})["full"] is False


def test_resume_survives_passivation():
    h = Harness()
    h.run("library_save", {"uris": [turi(0)]})
    seen = h.e.version
    h.run("library_save", {"uris": [turi(1)]})
    snap, at = h.e.snapshot(), h.e.version
    e = h.replay(at, snap)
    r = e.handle(Command("session", USER, "resume", {"since": seen}, ALICE, now_ms=h.now)).reply
    assert r["full"] is False and r["library"][0]["changes"][0]["uri"] == turi(1)


# ================================================================================================
# replay
# ================================================================================================
def test_snapshot_plus_records_rebuilds_identical_state():
    rng = random.Random(11)
    h = Harness()
    devices = ["phone", "laptop", "speaker"]
    snaps = {}
    for step in range(600):
        h.now += rng.randint(0, 3000)
        r = rng.random()
        try:
            if r < 0.35:
                h.run("library_save", {"uris": [turi(rng.randrange(300)) for _ in range(rng.randint(1, 4))]})
            elif r < 0.55:
                h.run("library_remove", {"uris": [turi(rng.randrange(300))]})
            elif r < 0.62:
                kind, pool = rng.choice([("album", ALBUMS), ("artist", ARTISTS), ("playlist", PLAYLISTS)])
                op = rng.choice(["library_save", "library_remove"])
                h.run(op, {"uris": [f"spotify:{kind}:{rng.choice(pool)}"]})
            elif r < 0.72:
                h.connect(f"gw{rng.randint(1, 2)}/c{rng.randint(1, 6)}", rng.choice(devices))
            elif r < 0.80:
                h.run("disconnect", {"conn": f"gw{rng.randint(1, 2)}/c{rng.randint(1, 6)}"}, SYSTEM)
            elif r < 0.82:
                h.run("end_connection", {"device_id": rng.choice(devices)})
            elif r < 0.90:
                h.tick()
            else:
                h.run("library_follow_playlist", {"playlist_id": rng.choice(PLAYLISTS)}, SYSTEM)
        except SyncopateError:
            pass
        if step % 150 == 75:
            snaps[h.e.version] = h.e.snapshot()
    final = norm(h.e.snapshot())
    assert norm(h.replay().snapshot()) == final
    for at, snap in snaps.items():
        assert norm(h.replay(at, snap).snapshot()) == final
    # the replayed entity answers the same
    e = h.replay()
    for kind in ("track", "album", "artist", "playlist"):
        q = Command("session", USER, "library_list", {"type": kind, "limit": 50}, ALICE)
        assert e.handle(q).reply == h.reply(q.op, q.args)


def test_one_refused_command_leaves_no_trace():
    h = Harness()
    h.run("library_save", {"uris": [turi(0), turi(1)]})
    before = norm(h.e.snapshot())
    for op, args, p in [("library_save", {"uris": [turi(2), f"spotify:track:{UNKNOWN}"]}, ALICE),
                        ("library_save", {"uris": [turi(2), "spotify:episode:" + "a" * 22]}, ALICE),
                        ("library_remove", {"uris": [turi(0), "bad"]}, ALICE),
                        ("connect", {"conn": "g/c", "device_id": 5}, SYSTEM)]:
        with pytest.raises(SyncopateError):
            h.run(op, args, p)
        assert norm(h.e.snapshot()) == before


# ================================================================================================
# large libraries
# ================================================================================================
def _big(n, seed=3):
    rng = random.Random(seed)
    ids = list({make_id(rng) for _ in range(n)})
    return ids


def _calls(fn) -> int:
    """Python function calls made by fn(): a measure of work that does not move with the machine."""
    n = 0

    def count(frame, event, arg):
        nonlocal n
        n += event == "call" or event == "c_call"
    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return n


def test_100k_likes_page_in_work_bounded_by_the_page_and_snapshot_compactly():
    n = 100_000
    ids = _big(n)
    h = Harness(catalog=catalog_with(ids))
    for k in range(0, len(ids), 50):
        h.now += 1
        h.run("library_save", {"uris": [f"spotify:track:{i}" for i in ids[k:k + 50]]})
    total = len(ids)
    assert h.reply("library_list", {"type": "track", "limit": 1})["total"] == total
    # newest first at a deep offset costs what a page near the top costs: O(limit), not O(offset)
    # (counted in calls, not timed: speed belongs to the benchmarks)
    page = h.reply("library_list", {"type": "track", "offset": total - 70, "limit": 50})
    assert [it["id"] for it in page["items"]] == list(reversed(ids[20:70]))
    top = _calls(lambda: h.reply("library_list", {"type": "track", "offset": 20, "limit": 50}))
    deep = _calls(lambda: h.reply("library_list", {"type": "track", "offset": total - 70, "limit": 50}))
    assert deep <= 2 * top + 200, (top, deep)
    tracemalloc.start()                 # nor does it copy the library (a C-level sort or copy is one call)
    try:
        h.reply("library_list", {"type": "track", "offset": total - 70, "limit": 50})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200_000, peak         # a list of 100,000 references alone is 800,000 bytes
    # contains / remove in the middle
    mid = ids[n // 2]
    assert h.reply("library_contains", {"uris": [f"spotify:track:{mid}"]}) == [True]
    h.run("library_remove", {"uris": [f"spotify:track:{mid}"]})
    assert h.reply("library_contains", {"uris": [f"spotify:track:{mid}"]}) == [False]
    # the snapshot is compact and round-trips
    snap = h.e.snapshot()
    size = len(norm(snap))
    assert size < 25 * total, size
    e = h.replay(h.e.version, snap)
    q = Command("session", USER, "library_list", {"type": "track", "offset": 12_345, "limit": 50}, ALICE)
    assert e.handle(q).reply == h.reply(q.op, q.args)


# ================================================================================================
# the Collection structure itself
# ================================================================================================
def test_collection_matches_a_naive_model():
    rng = random.Random(5)
    pool = [make_id(rng) for _ in range(200)]
    c, model, t = Collection(), {}, 0                    # model: id -> (ts, insertion seq)
    seq = 0
    for _ in range(3000):
        t += rng.randint(0, 2)
        i = rng.choice(pool)
        if rng.random() < 0.6:
            added = c.add(i, t)
            assert added == (i not in model)
            if added:
                seq += 1
                model[i] = (t, seq)
        else:
            assert c.remove(i) == (model.pop(i)[0] if i in model else None)
        if rng.random() < 0.05:
            c = Collection.load(msgpack.unpackb(msgpack.packb(c.dump()), raw=False))
            # reload renumbers insertion order but keeps time order
            order = [x for x, _ in c.items()]
            model = {x: (model[x][0], k) for k, x in enumerate(order)}
    newest = sorted(model, key=lambda x: model[x], reverse=True)
    assert [x for x, _ in c.newest(0, 1000)] == newest
    assert [x for x, _ in c.newest(7, 5)] == newest[7:12]
    assert [x for x, _ in c.by_id(limit=1000)] == sorted(model)
    s = sorted(model)
    assert [x for x, _ in c.by_id(after=s[3], limit=4)] == s[4:8]
    assert len(c) == len(model)
    for x in pool:
        assert c.get(x) == (model[x][0] if x in model else None)


def test_collection_empties_and_refuses_bad_ids():
    c = Collection()
    assert c.dump() is None and c.newest() == [] and c.by_id() == []
    a = "a" * 22
    assert c.add(a, 5) and not c.add(a, 9) and c.get(a) == 5
    assert c.remove(a) == 5 and len(c) == 0 and c.memory_bytes() == 0
    with pytest.raises(ValueError):
        c.add("short", 1)
    assert c.get("short") is None and c.remove("short") is None
    lib = Library.load(Library().dump())
    assert lib.totals() == {"track": 0, "album": 0, "artist": 0, "playlist": 0}


# ================================================================================================
# on the real host (memory store): activation, pushes, passivation, ticks
# ================================================================================================
async def test_on_the_entity_host_with_passivation_and_ticks():
    from actors.host import EntityHost
    from storage.memory import MemoryStore

    now = [1000.0]
    delivered: list = []
    dispatched: list = []
    env = Env(catalog=CATALOG)
    store = MemoryStore()
    host = EntityHost("h0", store, {"session": SessionEntity}, env, idle_timeout_s=60,
                      clock=lambda: now[0], deliver=lambda gw, items: delivered.extend(items),
                      dispatch=dispatched.append)
    await host.start()
    try:
        def cmd(op, args, p=ALICE, origin=None):
            return Command("session", USER, op, args, p, origin=origin)

        await host.call(cmd("subscribe", {}, ALICE, origin=("gw1", "c1")))
        _, v = await host.call(cmd("connect", {"conn": "gw1/c1", "device_id": "phone", "client": "app",
                                                "gateway": "gw1"}, SYSTEM))
        reply, v2 = await host.call(cmd("library_save", {"uris": [turi(0), f"spotify:playlist:{PLAYLISTS[0]}"]}))
        assert reply == {"changed": True, "library_version": v2} and v2 == v + 1
        await until(lambda: any(i.type == "library.changed" and i.version == v2 for i in delivered))
        pushes = [i for i in delivered if i.type == "library.changed"]
        assert pushes and pushes[-1].version == v2 and pushes[-1].payload["library_version"] == v2
        assert [(c.kind, c.op) for c in dispatched] == [("playlist", "follow")]
        # connections keep the session active; silence expires them via ticks
        assert not await host.passivate_idle(now[0] + 3600)
        now[0] += CONNECTION_TIMEOUT_MS / 1000 + 10
        host.run_ticks()
        await until(lambda: any(i.type == "session.changed" and i.payload["reason"] == "timeout" for i in delivered))
        assert await host.passivate_idle(now[0] + 3600) == 1
        # re-activation from the snapshot
        reply, v3 = await host.call(cmd("library_list", {"type": "track"}))
        assert reply["items"][0]["uri"] == turi(0) and v3 == v2 + 1
        r, _ = await host.call(cmd("resume", {"since": v}))
        assert r["full"] is False and r["library"][0]["library_version"] == v2
    finally:
        await host.close(passivate=False)


def test_batched_heartbeats_and_requests_keep_connections_alive():
    h = Harness()
    h.connect("gw1/c1", "phone")
    h.connect("gw1/c2", "laptop")
    h.connect("gw1/c3", "speaker")
    for _ in range(4):
        h.now += 15_000
        # one command for all of the user's connections on a gateway; c3 is silent, c2 only talks
        assert h.reply("heartbeat", {"conns": ["gw1/c1", "gw1/gone"]}, SYSTEM) == {"unknown": ["gw1/gone"]}
        h.run("library_contains", {"uris": [turi(0)]}, ALICE, origin=("gw1", "c2"))
        h.tick()
    assert [c["conn"] for c in h.reply("list_connections")["connections"]] == ["gw1/c1", "gw1/c2"]
    refused(ErrorCode.INVALID_FIELD, h.run, "heartbeat", {"conns": [1, 2]}, SYSTEM)
    # a refused request does not count as a sign of life (a refusal changes nothing)
    before = norm(h.e.snapshot())
    h.now += 1000
    refused(ErrorCode.INVALID_URI, h.run, "library_contains", {"uris": ["x"]}, ALICE, origin=("gw1", "c2"))
    assert norm(h.e.snapshot()) == before


# ================================================================================================
# through the real gateway (in-process server, memory store): two connections of one user
# ================================================================================================
SECRET = "session-entity-test-secret-0123456789"


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    from gateway.auth import write_secret
    from tests.support.servers import memory_server

    async with memory_server(tmp_path_factory, "sess", gateway={},
                             secret_file=str(write_secret(tmp_path_factory.mktemp("key") / "secret.key", SECRET)),
                             kinds="tests.support.servers:session_kinds") as srv:
        yield srv


async def test_two_connections_see_each_others_library_changes_and_sign_out(server):
    import aiohttp
    import orjson

    from gateway.auth import Auth

    srv, auth = server, Auth(SECRET)
    track = f"spotify:track:{next(iter(srv.cluster.hosts[0].env.catalog.tracks)).id}"

    async def recv(ws, want=None, timeout=5.0):
        while True:
            msg = await asyncio.wait_for(ws.receive(), timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                return msg
            f = orjson.loads(msg.data)
            if want is None or f.get("type") == want or f.get("id") == want:
                return f

    def frame(rid, mtype, payload):
        return orjson.dumps({"id": rid, "type": mtype, "payload": payload}).decode()

    async with aiohttp.ClientSession() as http:
        phone = await http.ws_connect(f"{srv.url}/v1/ws?token={auth.mint(USER, device_id='phone')}")
        laptop = await http.ws_connect(f"{srv.url}/v1/ws?token={auth.mint(USER, device_id='laptop')}")
        await recv(phone, "hello")
        await recv(laptop, "hello")
        # hello comes once the connection is registered and subscribed to the session
        await phone.send_str(frame("s1", "library.save", {"uris": [track]}))
        res = await recv(phone, "s1")
        assert res["type"] == "result" and res["payload"]["changed"] is True
        push = await recv(laptop, "library.changed")
        assert push["payload"]["changes"][0]["uri"] == track
        assert push["version"] == push["payload"]["library_version"] == res["version"]

        await laptop.send_str(frame("l1", "session.list", {}))
        conns = (await recv(laptop, "l1"))["payload"]["connections"]
        assert sorted(c["device_id"] for c in conns) == ["laptop", "phone"]
        assert [c["device_id"] for c in conns if c["current"]] == ["laptop"]

        # another user cannot follow this user's session
        bob = await http.ws_connect(f"{srv.url}/v1/ws?token={auth.mint('bob')}")
        await recv(bob, "hello")
        await bob.send_str(frame("b1", "subscribe", {"entity": f"session:{USER}"}))
        assert (await recv(bob, "b1"))["error"]["code"] == "FORBIDDEN"

        # the phone signs the laptop out: the laptop is told and closed, and cannot come back
        await phone.send_str(frame("e1", "session.end", {"device_id": "laptop"}))
        assert (await recv(phone, "e1"))["payload"]["closed"] == 1
        ended = await recv(laptop, "session.ended")
        assert ended["payload"]["device_id"] == "laptop"
        closing = await recv(laptop)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
        old_token = auth.mint(USER, device_id="laptop", now=time.time() - 5)
        # refused before the upgrade, with Spotify's error body
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{srv.url}/v1/ws?token={old_token}")
        assert refused.value.status == 401
        r = await http.get(f"{srv.url}/v1/ws?token={old_token}")
        assert (await r.json())["error"]["code"] == "SESSION_ENDED"
        # a token issued after the sign-out signs the device in again
        fresh = auth.mint(USER, device_id="laptop", now=time.time() + 2)
        again = await http.ws_connect(f"{srv.url}/v1/ws?token={fresh}")
        await recv(again, "hello")
        for ws in (phone, bob, again):
            await ws.close()


async def until(cond, timeout: float = 5.0) -> None:
    """Wait for `cond()` to hold, with a deadline (the condition, not a guessed delay)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)
