"""DeviceGroupEntity unit tests: the Connect state machine on the real EntityHost (tests/support/entities.py) with a controlled clock."""
from __future__ import annotations

import asyncio

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.devicegroup import HEARTBEAT_TIMEOUT_MS, OFFLINE_GRACE_MS, DeviceGroupEntity
from actors.entity import SYSTEM, Command, Env, Principal
from actors.player_state import compute_order
from gateway import presenters
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import Reply
from protocols.messages import DEVICE_GROUP, PLAYLIST
from tests.support.catalog import CatalogBuilder, tid, turi
from tests.support.entities import EntityDriver, OnDriver

USER = "alice"
T0 = 1_700_000_000_000


# -- the catalog: 30 tracks on 3 albums by 3 artists ------------------------------------------------
def album_uri(i: int) -> str:
    return f"spotify:album:a{i:021d}"


def pl_id(i: int) -> str:
    return f"p{i:021d}"


def pl_uri(i: int) -> str:
    return f"spotify:playlist:{pl_id(i)}"


DUR = 100_000   # every track lasts 100 s (track 7: 10 s; track 8: 40 s)


def _catalog():
    b = CatalogBuilder()
    for k in range(3):
        b.artist(f"r{k:021d}", f"Artist {k}")
        b.album(f"a{k:021d}", [f"r{k:021d}"], f"Album {k}")
    for i in range(30):
        b.track(tid(i), f"a{i // 10:021d}", [f"r{i % 3:021d}"], name=f"Song {i}",
                duration_ms={7: 10_000, 8: 40_000}.get(i, DUR))
    return b.build()


CAT = _catalog()


def rt(x):
    """msgpack round trip: what the store gives back."""
    return msgpack.unpackb(msgpack.packb(x, use_bin_type=True), raw=False, strict_map_key=False)


class H(OnDriver):
    """One device group on the real EntityHost (tests/support/entities.py) with a controlled clock:
    `do` returns what the host released for the command (reply, records, events, effects); `log`,
    `events` and `effects` are everything committed, pushed and dispatched so far."""

    def __init__(self, user: str = USER, config: dict | None = None) -> None:
        # by default devices never time out (tests advance the clock by whole tracks); the heartbeat
        # tests pass config={} to get the real timings
        if config is None:
            config = {"connect_heartbeat_timeout_ms": 10**12, "connect_offline_grace_ms": 10**12}
        self.env = Env(catalog=CAT, config=config)
        self.d = EntityDriver(DeviceGroupEntity, user, self.env, now_ms=T0)
        self.user = user
        self.base = rt(DeviceGroupEntity(user, self.env).snapshot())

    @property
    def log(self) -> list:
        return [recs for _, recs in self.d.entries()]

    @property
    def events(self) -> list:
        return self.d.pushes

    @property
    def effects(self) -> list:
        return self.d.effects

    def principal(self, product="premium", device=None):
        return Principal(self.user, product, device)

    def do(self, op, *, origin=None, principal=None, product="premium", **args):
        return self.d.command(op, args, principal=principal or self.principal(product), origin=origin)

    def sys(self, op, origin=None, **args):
        return self.do(op, principal=SYSTEM, origin=origin, **args)

    def playlist(self, i, rows, snapshot_id="snap-1"):
        """Playlist i holds `rows`: the host's ask for a play of it is answered with them."""
        self.d.serve(PLAYLIST, pl_id(i), "entries", {"entries": rows, "snapshot_id": snapshot_id})

    def tick(self):
        return self.d.tick()

    def advance(self, ms):
        self.now += ms

    def refuse(self, code, op, **kw):
        before = rt(self.e.snapshot())
        n_log, n_ev = len(self.log), len(self.events)
        with pytest.raises(SyncopateError) as ei:
            self.do(op, **kw)
        assert ei.value.code == ErrorCode(code), ei.value
        assert rt(self.e.snapshot()) == before, f"{op} refused with {code} but changed state"
        assert len(self.log) == n_log and len(self.events) == n_ev
        return ei.value

    def state(self):
        return self.do("state").reply

    def cluster(self):
        return self.events[-1].payload

    def replayed(self, snapshot=None, records=None):
        e2 = DeviceGroupEntity(self.user, self.env)
        e2.restore(rt(snapshot if snapshot is not None else self.base))
        for entry in (records if records is not None else self.log):
            for r in entry:
                e2.apply(r)
        return e2

    def check_replay(self):
        assert rt(self.replayed().snapshot()) == rt(self.e.snapshot())


def setup(h: H | None = None, n=2, **reg) -> H:
    h = h or H()
    for i in range(n):
        h.do("register", origin=("gw1", f"c{i}"), device_id=f"d{i}", name=f"Device {i}", type="computer",
             volume_percent=50, supports_volume=True, is_restricted=False, **reg)
    return h


def playing_album(h=None, album=0, **kw) -> H:
    h = setup(h)
    h.do("play", device_id="d0", context_uri=album_uri(album), **kw)
    return h


# == devices =======================================================================================
def test_register_returns_whole_cluster_and_pushes():
    h = H()
    out = h.do("register", origin=("gw1", "c0"), device_id="d0", name="Laptop", type="computer",
               volume_percent=40, supports_volume=True, is_restricted=False)
    cl = out.reply
    assert cl["devices"][0] == {"id": "d0", "active": False, "is_restricted": False,
                                "name": "Laptop", "type": "computer", "volume_percent": 40,
                                "supports_volume": True, "online": True}
    assert cl["active_device_id"] is None and cl["player"]["track_uri"] is None
    assert cl["reason"] == "new_device" and cl["revision"] == 1 and cl["server_time_ms"] == h.now
    assert cl["heartbeat_interval_ms"] == 10_000
    assert len(out.events) == 1 and out.events[0].type == "player.changed"
    assert "heartbeat_interval_ms" not in out.events[0].payload
    out = h.do("register", origin=("gw1", "c1"), device_id="d1", name="Phone", type="smartphone")
    assert [d["id"] for d in out.reply["devices"]] == ["d0", "d1"] and out.reply["revision"] == 2
    assert h.do("devices").reply["devices"][1]["volume_percent"] == 100     # defaults
    h.check_replay()


def test_reregister_keeps_device_settings_and_revisions_are_monotonic():
    h = setup()
    h.do("volume", device_id="d1", volume_percent=77)
    h.do("register", origin=("gw2", "x"), device_id="d1")          # reconnect elsewhere, nothing else said
    d1 = next(d for d in h.cluster()["devices"] if d["id"] == "d1")
    assert d1["volume_percent"] == 77 and d1["name"] == "Device 1"
    revs = [ev.payload["revision"] for ev in h.events]
    assert revs == sorted(revs) and len(set(revs)) == len(revs)
    h.check_replay()


def test_another_users_device_is_not_found_and_foreign_principal_forbidden():
    h = setup()
    other = setup(H("bob"), n=1)
    assert "d9" not in h.e.devices
    h.refuse("NOT_FOUND", "transfer", device_ids=["d9"])
    h.refuse("NOT_FOUND", "play", device_id="bob-phone", uris=[turi(1)])
    h.refuse("FORBIDDEN", "state", principal=Principal("bob"))
    h.refuse("FORBIDDEN", "disconnect", device_id="d0")           # system op from a user
    assert other.e.devices.keys() == {"d0"}


def test_update_device_volume_and_name():
    h = setup()
    h.do("update_device", device_id="d0", volume_percent=10)
    assert h.cluster()["reason"] == "volume_changed"
    h.do("update_device", device_id="d0", name="Den")
    assert h.cluster()["reason"] == "device_state_changed"
    h.refuse("BAD_REQUEST", "update_device", device_id="d0", volume_percent=101)
    h.refuse("INVALID_FIELD", "update_device", device_id="d0")
    h.refuse("NOT_FOUND", "update_device", device_id="zz", name="x")
    h.check_replay()


# == play, pause, extrapolation ======================================================================
def test_play_album_state_and_extrapolation_with_controlled_clock():
    h = playing_album()
    s = h.state()
    assert s["device"]["id"] == "d0" and s["device"]["active"]
    assert s["uri"] == turi(0) and s["progress_ms"] == 0 and s["is_playing"]
    assert s["context_uri"] == album_uri(0)
    assert s["uri"] is not None and s["repeat"] == "off" and s["shuffle"] is False
    assert s["disallows"] == {"resuming": True, "skipping_prev": True}
    h.advance(12_345)
    assert h.state()["progress_ms"] == 12_345
    cl = h.cluster()
    assert cl["player"]["position_as_of_timestamp"] == 0 and cl["player"]["timestamp"] == T0
    assert cl["player"]["playback_speed"] == 1.0 and cl["player"]["duration"] == DUR
    assert cl["player"]["track_uri"] == turi(0)
    track = presenters.cluster(h.e.env.catalog, cl)["player"]["track"]      # as devices read it
    assert track["name"] == "Song 0" and track["artists"][0]["name"] == "Artist 0"
    assert cl["player"]["context"] == {"uri": album_uri(0), "index": 0}
    assert cl["next_tracks"] == [turi(1), turi(2)]
    assert cl["active_device_id"] == "d0" and cl["player"]["volume_percent"] == 50
    h.do("pause")
    assert h.cluster()["player"]["position_as_of_timestamp"] == 12_345
    assert h.cluster()["player"]["playback_speed"] == 0.0
    h.advance(60_000)
    assert h.state()["progress_ms"] == 12_345            # paused: frozen
    h.refuse("ALREADY_PAUSED", "pause")
    h.do("play")                                         # resume
    h.advance(1_000)
    assert h.state()["progress_ms"] == 13_345
    h.refuse("NOT_PAUSED", "play")
    h.check_replay()


def test_play_offsets_and_position():
    h = setup()
    h.do("play", context_uri=album_uri(1), offset={"position": 3}, position_ms=5_000, device_id="d1")
    s = h.state()
    assert s["uri"] == turi(13) and s["progress_ms"] == 5_000 and s["device"]["id"] == "d1"
    h.do("play", uris=[turi(2), turi(4), turi(6)], offset={"uri": turi(4)})
    s = h.state()
    assert s["uri"] == turi(4) and s["context_uri"] is None
    assert h.cluster()["player"]["context"] == {"uri": None, "index": 1}
    h.refuse("BAD_REQUEST", "play", uris=[turi(2)], offset={"position": 5})
    h.refuse("BAD_REQUEST", "play", uris=[turi(2)], offset={"uri": turi(3)})
    h.refuse("BAD_REQUEST", "play", offset={"position": 0})
    h.refuse("BAD_REQUEST", "play", uris=[turi(2)], context_uri=album_uri(0))
    h.refuse("BAD_REQUEST", "play", uris=[])
    h.refuse("BAD_REQUEST", "play", uris=[turi(2)], position_ms=-1)
    h.refuse("INVALID_URI", "play", uris=["spotify:track:nope"])
    h.refuse("UNKNOWN_URI", "play", uris=[f"spotify:track:{'z' * 22}"])
    h.refuse("UNKNOWN_URI", "play", context_uri=f"spotify:album:{'z' * 22}")
    h.refuse("INVALID_URI", "play", context_uri=turi(1))
    h.d.serve(PLAYLIST, pl_id(1), "entries", SyncopateError(ErrorCode.NOT_FOUND, f"no playlist {pl_id(1)}"))
    err = h.refuse("NOT_FOUND", "play", context_uri=pl_uri(1))        # the host's ask was refused
    assert err.message == f"playlist {pl_id(1)} not found"
    with pytest.raises(SyncopateError) as ei:        # the op never runs without the host's answer
        h.e.handle(Command(DEVICE_GROUP, USER, "play", {"context_uri": pl_uri(1)}, h.principal()))
    assert ei.value.code == ErrorCode.INVALID_FIELD
    h.refuse("CONTEXT_DISALLOW", "play", context_uri=f"spotify:artist:{'r' * 22}")
    h.check_replay()


def test_play_no_device_errors():
    h = H()
    h.refuse("NO_ACTIVE_DEVICE", "play", uris=[turi(1)])
    h = setup()
    h.refuse("NO_ACTIVE_DEVICE", "play", uris=[turi(1)])             # REST, nothing active
    h.refuse("NO_SPECIFIC_TRACK", "play", device_id="d0")            # nothing to resume
    h.refuse("NO_ACTIVE_DEVICE", "pause")
    h.refuse("NO_ACTIVE_DEVICE", "next")
    h.refuse("NO_ACTIVE_DEVICE", "volume", volume_percent=3)
    assert h.state() is None and h.do("currently_playing").reply is None
    # a device's own websocket command with nothing active plays on that device
    h.do("play", origin=("gw1", "c1"), uris=[turi(1)])
    assert h.e.active == "d1"


def test_lazy_advance_at_track_end_is_exact_and_tick_commits_it():
    h = playing_album()
    h.advance(DUR + 2_500)                       # track 0 ended 2.5 s ago
    s = h.state()                                # a read settles a view, without committing
    assert s["uri"] == turi(1) and s["progress_ms"] == 2_500
    assert h.e.p["uri"] == turi(0)
    out = h.tick()
    assert out is not None and out.events[0].payload["reason"] == "player_state_changed"
    p = h.cluster()["player"]
    assert p["track_uri"] == turi(1) and p["timestamp"] == T0 + DUR and p["position_as_of_timestamp"] == 0
    assert h.cluster()["next_tracks"] == [turi(2), turi(3)]
    assert h.tick() is None                      # nothing more to do
    # several tracks at once (tracks 7 and 8 are 10 s and 40 s)
    h.do("play", context_uri=album_uri(0), offset={"position": 6})
    h.advance(DUR + 10_000 + 1_000)
    h.tick()
    assert h.e.p["uri"] == turi(8) and h.state()["progress_ms"] == 1_000
    h.check_replay()


def test_command_after_track_end_acts_on_the_settled_track():
    h = playing_album()
    h.advance(DUR + 30_000)
    h.do("pause")
    p = h.cluster()["player"]
    assert p["track_uri"] == turi(1) and p["position_as_of_timestamp"] == 30_000 and not p["is_playing"]
    h.check_replay()


# == transfer and fencing ============================================================================
def test_transfer_keeps_position_and_play_state():
    h = playing_album()
    h.advance(42_000)
    h.do("transfer", device_ids=["d1"])
    cl = h.cluster()
    assert cl["active_device_id"] == "d1" and cl["player"]["is_playing"]
    assert cl["player"]["position_as_of_timestamp"] == 42_000 and cl["player"]["timestamp"] == h.now
    assert [d["active"] for d in cl["devices"]] == [False, True]
    h.advance(1_000)
    assert h.state()["progress_ms"] == 43_000 and h.state()["device"]["id"] == "d1"
    h.do("pause")
    h.advance(5_000)
    h.do("transfer", device_ids=["d0"])                    # play absent: stays paused
    assert not h.cluster()["player"]["is_playing"] and h.cluster()["player"]["position_as_of_timestamp"] == 43_000
    h.do("transfer", device_ids=["d1"], play=False)        # false: keep (paused)
    assert not h.cluster()["player"]["is_playing"]
    h.do("transfer", device_ids=["d0"], play=True)
    assert h.cluster()["player"]["is_playing"] and h.cluster()["player"]["position_as_of_timestamp"] == 43_000
    # whole playback moves: context, queue, shuffle, repeat
    h.do("queue_add", uri=turi(20))
    h.do("repeat", state="context")
    h.do("transfer", device_ids=["d1"])
    p = h.cluster()["player"]
    assert p["queue"] == [turi(20)] and p["repeat"] == "context" and p["context"]["uri"] == album_uri(0)
    h.check_replay()


def test_transfer_errors():
    h = playing_album()
    h.refuse("BAD_REQUEST", "transfer", device_ids=["d0", "d1"])
    h.refuse("BAD_REQUEST", "transfer", device_ids=[])
    h.refuse("BAD_REQUEST", "transfer")
    h.refuse("NOT_FOUND", "transfer", device_ids=["nope"])
    h.refuse("INVALID_FIELD", "transfer", device_ids=["d1"], play="maybe")
    h.sys("disconnect", device_id="d1", origin=("gw1", "c1"))
    h.refuse("BAD_REQUEST", "transfer", device_ids=["d1"])          # offline
    h.check_replay()


def test_fencing_by_revision_refuses_a_late_push_from_the_old_device():
    h = playing_album()
    rev_before = h.cluster()["revision"]
    h.do("transfer", device_ids=["d1"], origin=("gw1", "c1"))
    fence = h.cluster()["revision"]
    # the old device, which has not yet seen the transfer, tries to take playback back / change it
    h.refuse("CONFLICT", "transfer", device_ids=["d0"], revision=rev_before, origin=("gw1", "c0"))
    h.refuse("CONFLICT", "play", device_id="d0", revision=rev_before, origin=("gw1", "c0"))
    h.refuse("CONFLICT", "pause", revision=rev_before)
    h.refuse("CONFLICT", "update_device", device_id="d0", volume_percent=3, revision=rev_before)
    h.refuse("INVALID_FIELD", "pause", revision="x")
    # up to date: accepted
    h.do("pause", revision=fence)
    h.do("volume", volume_percent=20, revision=fence)           # not a transfer: fence stays
    h.do("play", revision=fence)
    assert h.e.active == "d1"
    h.check_replay()


# == queue ============================================================================================
def test_queue_plays_before_context_and_previous_returns_to_context():
    h = playing_album()
    h.do("queue_add", uri=turi(25))
    h.do("queue_add", uri=turi(26))
    q = h.do("queue").reply
    assert q["currently_playing"] == turi(0)
    assert q["queue"][:4] == [turi(25), turi(26), turi(1), turi(2)]
    assert h.cluster()["next_tracks"] == [turi(25), turi(26)]
    h.do("next")
    assert h.e.p["uri"] == turi(25) and h.cluster()["player"]["queue"] == [turi(26)]
    assert h.cluster()["player"]["context"]["index"] is None
    h.do("next")
    h.do("next")
    assert h.e.p["uri"] == turi(1) and h.cluster()["player"]["context"]["index"] == 1
    h.do("queue_add", uri=turi(27))
    h.do("next")
    assert h.e.p["uri"] == turi(27)
    h.do("previous")                                  # back to the context track that played before
    assert h.e.p["uri"] == turi(1)
    # the queue also drains automatically, and survives playing another context
    h.do("queue_add", uri=turi(28))
    h.do("play", context_uri=album_uri(2))
    h.advance(DUR)
    h.tick()
    assert h.e.p["uri"] == turi(28)
    h.refuse("INVALID_URI", "queue_add", uri="spotify:album:" + "a" * 22)
    h.refuse("UNKNOWN_URI", "queue_add", uri=f"spotify:track:{'z' * 22}")
    h.refuse("INVALID_FIELD", "queue_add")
    h.check_replay()


# == next / previous / seek =========================================================================
def test_next_previous_at_the_ends():
    h = setup()
    h.do("play", uris=[turi(1), turi(2), turi(3)], device_id="d0")
    h.refuse("NO_PREV_TRACK", "previous")
    h.do("next")
    h.do("next")
    assert h.e.p["uri"] == turi(3)
    h.refuse("NO_NEXT_TRACK", "next")
    assert h.state()["disallows"].get("skipping_next")
    h.do("previous")
    assert h.e.p["uri"] == turi(2)
    h.do("repeat", state="context")
    h.do("next")
    h.do("next")
    assert h.e.p["uri"] == turi(1)                    # wrapped
    h.do("previous")
    assert h.e.p["uri"] == turi(3)                    # wrapped back
    h.check_replay()


def test_seek_rules():
    h = setup()
    h.do("play", uris=[turi(1), turi(2)], device_id="d0")
    h.do("seek", position_ms=30_000)
    assert h.state()["progress_ms"] == 30_000
    h.refuse("BAD_REQUEST", "seek", position_ms=-5)
    h.refuse("INVALID_FIELD", "seek", position_ms="10")
    h.refuse("INVALID_FIELD", "seek")
    h.do("seek", position_ms=DUR + 1)                  # past the end: next track
    s = h.state()
    assert s["uri"] == turi(2) and s["progress_ms"] == 0 and s["is_playing"]
    h.do("seek", position_ms=DUR)                      # past the end of the last: back to the first, paused
    s = h.state()
    assert s["uri"] == turi(1) and not s["is_playing"] and s["progress_ms"] == 0
    h.check_replay()


# == repeat and shuffle ================================================================================
def test_repeat_semantics():
    h = setup()
    h.do("play", uris=[turi(1), turi(2)], device_id="d0")
    h.refuse("BAD_REQUEST", "repeat", state="sometimes")
    h.refuse("INVALID_FIELD", "repeat")
    h.do("repeat", state="track")
    assert h.cluster()["next_tracks"] == [turi(1)]
    pid = h.e.p["playback_id"]
    h.advance(DUR + 1_000)
    h.tick()
    assert h.e.p["uri"] == turi(1) and h.e.p["playback_id"] == pid + 1 and h.state()["progress_ms"] == 1_000
    h.do("next")                                       # a user skip moves on even with repeat track
    assert h.e.p["uri"] == turi(2)
    h.do("repeat", state="context")
    h.advance(DUR)
    h.tick()
    assert h.e.p["uri"] == turi(1) and h.e.p["playing"]
    h.do("repeat", state="off")
    h.advance(2 * DUR + 5)                             # both end: back to the first, paused
    h.tick()
    assert h.e.p["uri"] == turi(1) and not h.e.p["playing"] and h.e.p["position_ms"] == 0
    assert h.e.p["timestamp_ms"] == T0 + 4 * DUR + 1_000            # exactly when the last track ended
    h.check_replay()


def test_shuffle_is_deterministic_from_the_command_seed_and_replays():
    a, b = playing_album(), playing_album()
    for h in (a, b):
        h.advance(5_000)
        h.do("shuffle", state=True, seed=1234)
    order_a = compute_order(a.e.p["tracks"], True, a.e.p["seed"], a.e.p["anchor"])
    order_b = compute_order(b.e.p["tracks"], True, b.e.p["seed"], b.e.p["anchor"])
    assert list(order_a) == list(order_b) and list(order_a) != list(range(10))
    assert order_a[0] == 0                               # the playing track stays first
    assert a.state()["progress_ms"] == 5_000 and a.e.p["uri"] == turi(0)
    # the rest of the album plays, each track once, in the shuffled order
    played = []
    for _ in range(9):
        a.do("next")
        played.append(a.e.p["uri"])
    assert played == [turi(i) for i in order_a[1:]]
    a.refuse("NO_NEXT_TRACK", "next")
    # off again: back to the natural place of the current track
    a.do("shuffle", state=False)
    last = order_a[-1]
    assert a.cluster()["player"]["context"]["index"] == last
    a.check_replay()
    # without an explicit seed the seed is derived from the command and stored in the record
    c = playing_album()
    c.do("shuffle", state=True)
    seed = c.e.p["seed"]
    assert any("seed" in r.get("player", {}) for entry in c.log for r in entry)
    assert c.replayed().p["seed"] == seed
    c.refuse("INVALID_FIELD", "shuffle", state="yes")
    c.refuse("INVALID_FIELD", "shuffle")


def test_play_with_shuffle_on_starts_at_the_offset_and_covers_the_context():
    h = playing_album()
    h.do("shuffle", state=True, seed=7)
    h.do("play", context_uri=album_uri(1), offset={"position": 4}, seed=99)
    assert h.e.p["uri"] == turi(14)
    seen = {h.e.p["uri"]}
    while True:
        try:
            h.do("next")
        except SyncopateError as err:
            assert err.code == ErrorCode.NO_NEXT_TRACK
            break
        seen.add(h.e.p["uri"])
    assert seen == {turi(i) for i in range(10, 20)}
    h.check_replay()


# == volume ============================================================================================
def test_volume_rules():
    h = playing_album()
    h.do("volume", volume_percent=80)
    assert h.cluster()["reason"] == "volume_changed" and h.cluster()["player"]["volume_percent"] == 80
    h.do("volume", volume_percent=0, device_id="d1")                   # not the active one: allowed
    assert h.e.devices["d1"]["volume_percent"] == 0
    h.refuse("BAD_REQUEST", "volume", volume_percent=101)
    h.refuse("BAD_REQUEST", "volume", volume_percent=-1)
    h.refuse("INVALID_FIELD", "volume", volume_percent="loud")
    h.refuse("INVALID_FIELD", "volume")
    h.do("register", origin=("gw1", "c9"), device_id="spk", name="Speaker", type="speaker", supports_volume=False)
    h.refuse("VOLUME_CONTROL_DISALLOW", "volume", volume_percent=10, device_id="spk")
    h.refuse("VOLUME_CONTROL_DISALLOW", "update_device", device_id="spk", volume_percent=10)
    h.check_replay()


def test_restricted_device_refuses_remote_commands_but_not_its_own():
    h = setup()
    h.do("register", origin=("gw1", "cr"), device_id="car", name="Car", type="car", is_restricted=True)
    h.refuse("DEVICE_NOT_CONTROLLABLE", "transfer", device_ids=["car"])
    h.refuse("DEVICE_NOT_CONTROLLABLE", "play", device_id="car", uris=[turi(1)])
    h.do("play", device_id="car", uris=[turi(1)], origin=("gw1", "cr"))      # from the car itself
    assert h.e.active == "car"
    h.refuse("DEVICE_NOT_CONTROLLABLE", "pause", origin=("gw1", "c0"))
    h.refuse("DEVICE_NOT_CONTROLLABLE", "volume", volume_percent=5)
    assert h.state()["device"]["is_restricted"]
    h.do("pause", origin=("gw1", "cr"))
    h.do("transfer", device_ids=["d0"], origin=("gw1", "c0"))                 # taking over from it is fine
    h.check_replay()


# == free tier ===========================================================================================
def test_free_tier_can_read_and_register_but_not_control():
    h = playing_album()
    for op, args in [("play", {}), ("pause", {}), ("next", {}), ("previous", {}), ("seek", {"position_ms": 1}),
                     ("repeat", {"state": "off"}), ("shuffle", {"state": True}), ("volume", {"volume_percent": 1}),
                     ("transfer", {"device_ids": ["d1"]}), ("queue_add", {"uri": turi(3)})]:
        h.refuse("PREMIUM_REQUIRED", op, product="free", **args)
    assert h.do("state", product="free").reply["uri"] == turi(0)
    assert h.do("devices", product="free").reply["devices"]
    h.do("register", product="free", origin=("gw1", "c5"), device_id="d5")
    h.do("heartbeat", product="free", device_id="d5")


# == disconnect and heartbeats =============================================================================
def test_active_device_disconnect_pauses_at_extrapolated_position_and_anyone_resumes():
    h = playing_album()
    h.advance(20_000)
    h.sys("disconnect", device_id="d0", origin=("gw1", "c0"))
    cl = h.cluster()
    assert cl["active_device_id"] is None and not cl["player"]["is_playing"]
    assert cl["player"]["position_as_of_timestamp"] == 20_000 and cl["reason"] == "device_state_changed"
    assert [d["online"] for d in cl["devices"]] == [False, True]
    assert [d["id"] for d in h.do("devices").reply["devices"]] == ["d1"]
    assert h.state() is None
    h.advance(10_000)
    h.refuse("NO_ACTIVE_DEVICE", "play")                      # REST, no device named
    h.do("play", origin=("gw1", "c1"))                        # the phone resumes: takes over
    cl = h.cluster()
    assert cl["active_device_id"] == "d1" and cl["player"]["is_playing"]
    assert cl["player"]["position_as_of_timestamp"] == 20_000
    h.check_replay()


def test_stale_disconnect_after_reconnect_is_ignored():
    h = playing_album()
    h.do("register", origin=("gw2", "new"), device_id="d0")          # reconnected before the close was noticed
    n = len(h.log)
    out = h.sys("disconnect", device_id="d0", origin=("gw1", "c0"))  # the old socket's close
    assert out.records == [] and len(h.log) == n and h.e.devices["d0"]["online"] and h.e.active == "d0"
    # as the gateway sends it: the device and "gateway/connection"
    assert h.sys("disconnect", device_id="d0", conn="gw1/c0").records == []
    h.sys("disconnect", device_id="d1", conn="gw1/c1")
    assert not h.e.devices["d1"]["online"] and h.e.active == "d0"
    # a disconnect naming only the connection
    h.sys("disconnect", origin=("gw2", "new"))
    assert not h.e.devices["d0"]["online"] and h.e.active is None
    h.refuse("INVALID_FIELD", "disconnect", principal=SYSTEM)
    h.check_replay()


def test_subscribe_answers_the_current_cluster():
    h = playing_album()
    out = h.do("subscribe", since=3)
    assert out.records == [] and out.reply["reason"] is None
    assert out.reply["revision"] == h.e.revision and out.reply["active_device_id"] == "d0"
    h.refuse("FORBIDDEN", "subscribe", principal=Principal("mallory"))


def test_heartbeat_expiry_via_tick_then_removal_and_pick_up_on_reconnect():
    h = playing_album(H(config={}))
    for _ in range(3):
        h.advance(10_000)
        h.do("heartbeat", device_id="d1")
    assert h.tick() is not None                    # d0 silent 30 s: offline, playback paused
    assert not h.e.devices["d0"]["online"] and h.e.devices["d1"]["online"]
    assert h.e.active is None and not h.e.p["playing"] and h.e.p["position_ms"] == 30_000
    assert h.cluster()["reason"] == "device_state_changed"
    # d0 comes back with its id: it is the active device again, paused where it was
    out = h.do("register", origin=("gw1", "c0b"), device_id="d0")
    assert out.reply["active_device_id"] == "d0" and out.reply["reason"] == "new_device"
    assert out.reply["player"]["position_as_of_timestamp"] == 30_000 and not out.reply["player"]["is_playing"]
    # now everybody goes silent
    h.advance(HEARTBEAT_TIMEOUT_MS)
    h.tick()
    assert h.e.idle()
    h.advance(OFFLINE_GRACE_MS - 1)
    assert h.tick() is None
    h.advance(1)
    h.tick()
    assert h.e.devices == {} and h.cluster()["reason"] == "devices_disappeared"
    h.refuse("NOT_FOUND", "heartbeat", device_id="d1")
    h.check_replay()


def test_paused_but_heartbeating_device_never_drops_out():
    h = playing_album(H(config={}))
    h.do("pause")
    for _ in range(60):                           # 10 minutes, paused (librespot #1102)
        h.advance(10_000)
        h.do("heartbeat", device_id="d0")
        h.do("heartbeat", device_id="d1")
        assert h.tick() is None
    assert h.e.active == "d0" and all(d["online"] for d in h.e.devices.values())


def test_any_command_from_a_device_and_the_gateways_bulk_heartbeat_keep_it_alive():
    h = playing_album(H(config={}))
    h.do("register", origin=("gw1", "c2"), device_id="d2")
    for _ in range(6):
        h.advance(10_000)
        h.do("volume", volume_percent=30, origin=("gw1", "c1"))        # d1 speaks: alive
        h.sys("heartbeat", conns=["gw1/c0", "gw9/zz"])                  # the gateway vouches for d0
        h.tick()
    assert h.e.devices["d0"]["online"] and h.e.devices["d1"]["online"]
    assert not h.e.devices["d2"]["online"]
    assert h.sys("heartbeat", conns=["gw1/c0"]).reply["devices"] == ["d0"]
    h.refuse("INVALID_FIELD", "heartbeat", principal=SYSTEM, conns="gw1/c0")


def test_heartbeat_revives_an_offline_device_and_liveness_is_soft_state():
    h = setup(H(config={}))
    h.advance(HEARTBEAT_TIMEOUT_MS)
    h.tick()
    assert not h.e.devices["d0"]["online"]
    out = h.do("heartbeat", device_id="d0", origin=("gw1", "c0"))
    assert h.e.devices["d0"]["online"] and out.reply["revision"] == h.e.revision
    # a restored entity gives every online device a full timeout from its first tick
    e2 = h.replayed()
    assert e2._seen == {}
    assert e2.tick(h.now + HEARTBEAT_TIMEOUT_MS * 5) is None
    assert e2.tick(h.now + HEARTBEAT_TIMEOUT_MS * 6) is not None


# == playlist contexts ==================================================================================
def entries(n, start=0):
    return [[f"e{i}", turi(i)] for i in range(start, start + n)]


def test_playlist_context_listener_effects():
    h = setup()
    h.playlist(1, entries(5))
    h.do("play", context_uri=pl_uri(1), device_id="d0")
    # asked as the user, not as the system: the group's market first (it has none yet), then the entries
    assert [(c.kind, c.entity_id, c.op, c.args, c.principal) for c in h.d.asked] == \
        [("account", USER, "market", {}, h.principal()), ("playlist", pl_id(1), "entries", {}, h.principal())]
    assert [(c.kind, c.entity_id, c.op, c.args, c.principal.system) for c in h.effects] == \
        [("playlist", pl_id(1), "add_listener", {"user_id": USER, "snapshot_id": "snap-1"}, True)]
    h.effects.clear()
    h.do("play", context_uri=pl_uri(1), offset={"position": 2})
    assert h.effects == []
    h.do("play", context_uri=album_uri(0))
    assert [(c.entity_id, c.op) for c in h.effects] == [(pl_id(1), "remove_listener")]
    h.effects.clear()
    out = h.sys("context_changed", context_uri=pl_uri(1), entries=entries(3))  # no longer playing it
    assert out.records == [] and [(c.entity_id, c.op) for c in out.effects] == [(pl_id(1), "remove_listener")]


def test_context_changed_keeps_the_current_entry_and_position():
    h = setup()
    h.playlist(1, entries(6))
    h.do("play", context_uri=pl_uri(1), offset={"position": 2}, device_id="d0")
    h.advance(33_000)
    # two tracks inserted at the top and one moved: e2 is still playing, 33 s in
    new = [["x1", turi(20)], ["x2", turi(21)], ["e0", turi(0)], ["e1", turi(1)], ["e4", turi(4)],
           ["e2", turi(2)], ["e3", turi(3)], ["e5", turi(5)]]
    h.sys("context_changed", context_uri=pl_uri(1), entries=new)
    s = h.state()
    assert s["uri"] == turi(2) and s["progress_ms"] == 33_000
    assert h.cluster()["player"]["context"]["index"] == 5 and h.cluster()["next_tracks"] == [turi(3), turi(5)]
    # the playing entry is removed: it keeps playing, and the next one is the entry that followed it
    h.sys("context_changed", context_uri=pl_uri(1), entries=[e for e in new if e[0] != "e2"])
    s = h.state()
    assert s["uri"] == turi(2) and s["progress_ms"] == 33_000
    assert h.cluster()["player"]["context"]["index"] is None
    h.do("next")
    assert h.e.p["uri"] == turi(3)
    h.do("previous")
    assert h.e.p["uri"] == turi(4)                   # the entry before the removed one
    h.refuse("FORBIDDEN", "context_changed", context_uri=pl_uri(1), entries=new)
    h.check_replay()


def test_context_changed_while_shuffled_keeps_order_of_the_others():
    h = setup()
    h.playlist(1, entries(8))
    h.do("play", context_uri=pl_uri(1), device_id="d0")
    h.do("shuffle", state=True, seed=42)
    h.do("next")
    before = h.do("queue").reply["queue"]
    h.sys("context_changed", context_uri=pl_uri(1), entries=entries(8) + [["new", turi(25)]])
    cur = h.e.p["uri"]
    after = list(h.do("queue").reply["queue"])
    assert h.e.p["uri"] == cur
    assert [u for u in after if u != turi(25)] == before
    h.check_replay()


# == listening events ========================================================================================
def test_listening_events_count_exactly_once():
    h = playing_album()
    h.advance(10_000)
    out = h.do("progress", event_id="ev1", device_id="d0", uri=turi(0), ms_played=10_000)
    assert out.reply == {"counted": False, "duplicate": False, "stream_count": 0} and out.records == []
    h.advance(25_000)
    out = h.do("progress", event_id="ev2", device_id="d0", uri=turi(0), ms_played=35_000)
    assert out.reply["counted"] and out.reply["stream_count"] == 1 and out.events == []
    # the same event again (a retry after a reconnect) and a later report of the same play
    assert h.do("progress", event_id="ev2", device_id="d0", uri=turi(0), ms_played=35_000).reply["duplicate"]
    assert not h.do("progress", event_id="ev3", device_id="d0", uri=turi(0), ms_played=60_000).reply["counted"]
    # the same event retried after the track changed is still a duplicate
    h.do("next")
    assert h.do("progress", event_id="ev2", device_id="d0", uri=turi(0), ms_played=35_000).reply["duplicate"]
    # reports naming the playback id, and reports from a device that is no longer active
    pid = h.e.p["playback_id"]
    h.do("transfer", device_ids=["d1"])
    assert h.do("progress", event_id="ev4", device_id="d0", uri=turi(1), ms_played=31_000,
                playback_id=pid).reply["counted"]
    assert not h.do("progress", event_id="ev5", device_id="d1", uri=turi(1), ms_played=90_000,
                    playback_id=pid).reply["counted"]
    assert h.do("stream_counts").reply["counts"] == {turi(0): 1, turi(1): 1}
    assert h.do("stream_counts", uris=[turi(0), turi(5)]).reply["counts"] == {turi(0): 1, turi(5): 0}
    h.refuse("BAD_REQUEST", "progress", event_id="x", device_id="d0", uri=turi(1), ms_played=-1)
    h.refuse("BAD_REQUEST", "progress", event_id="x", device_id="d0", uri=turi(1), ms_played=1, playback_id=999)
    h.refuse("NOT_FOUND", "progress", event_id="x", device_id="nope", uri=turi(1), ms_played=40_000)
    h.refuse("UNKNOWN_URI", "progress", event_id="x", device_id="d0", uri=f"spotify:track:{'z' * 22}", ms_played=1)
    h.refuse("INVALID_FIELD", "progress", device_id="d0", uri=turi(1), ms_played=1)
    h.check_replay()
    # exactly once survives a restart: the counted ids are in the replayed state
    e2 = h.replayed()
    dup = e2.handle(Command(DEVICE_GROUP, USER, "progress", {"event_id": "ev2", "device_id": "d0", "uri": turi(0),
                                                              "ms_played": 35_000}, Principal(USER), now_ms=h.now))
    assert dup.reply["duplicate"] and dup.records == []


def test_counted_window_is_bounded_and_playback_ids_below_the_floor_never_count_again():
    h = setup()
    h.do("play", uris=[turi(1)], device_id="d0")
    h.do("repeat", state="track")
    first_pid = h.e.p["playback_id"]
    for i in range(1_005):
        h.do("progress", event_id=f"ev{i}", device_id="d0", uri=turi(1), ms_played=30_000,
             playback_id=h.e.p["playback_id"])
        h.advance(DUR)
        h.tick()                                     # repeat track: a new play, a new playback id
    assert len(h.e.counted_events) == 1_000 and len(h.e.counted_plays) == 1_000
    assert h.e.play_floor >= first_pid
    assert h.e.streams[turi(1)] == 1_005
    out = h.do("progress", event_id="late", device_id="d0", uri=turi(1), ms_played=50_000, playback_id=first_pid)
    assert not out.reply["counted"]
    h.check_replay()


def test_recently_played_cursor_paging():
    h = setup()
    h.do("play", uris=[turi(i) for i in range(10)], device_id="d0")
    times = []
    for i in range(60):
        h.advance(1_000)
        times.append(h.now)
        # from d1 (not the active device): each report is a play of its own, keyed by its event id
        # (track 7 lasts 10 s: a 30 s report of it is refused; track 17 stands in for it)
        h.do("progress", event_id=f"e{i}", device_id="d1", uri=turi(i % 10 if i % 10 != 7 else 17), ms_played=30_000,
             context_uri=album_uri(0))
    assert len(h.e.recent) == 50
    def rp(**kw):             # the page as clients read it (gateway/presenters.py)
        return presenters.recently_played(h.e.env.catalog, h.do("recently_played", **kw).reply, presenters.WS_BASE)
    page = rp(limit=20)
    assert page["items"][0]["played_at"].endswith("Z")
    assert page["cursors"] == {"after": str(times[-1]), "before": str(times[-20])}
    assert page["items"][0]["track"]["uri"] == turi(59 % 10) and page["next"]
    assert page["items"][0]["context"]["uri"] == album_uri(0)
    older = rp(limit=50, before=int(page["cursors"]["before"]))
    assert len(older["items"]) == 30 and older["next"] is None
    newer = rp(after=times[-5])
    assert len(newer["items"]) == 4 and newer["items"][0]["played_at"] > newer["items"][-1]["played_at"]
    h.refuse("BAD_REQUEST", "recently_played", limit=51)
    h.refuse("BAD_REQUEST", "recently_played", limit=0)
    h.refuse("BAD_REQUEST", "recently_played", before=1, after=2)
    assert h.do("recently_played", product="free").reply["limit"] == 20


# == errors leave state unchanged, replay reproduces ============================================================
def test_unknown_op_and_bad_args():
    h = setup()
    h.refuse("UNKNOWN_MESSAGE_TYPE", "explode")                  # one code for an unknown op, every entity
    h.refuse("INVALID_FIELD", "register")
    h.refuse("INVALID_FIELD", "register", device_id="")
    h.refuse("BAD_REQUEST", "register", device_id="d7", volume_percent=500)
    h.refuse("INVALID_FIELD", "register", device_id="d7", supports_volume="no")
    h.refuse("NO_ACTIVE_DEVICE", "seek", position_ms=1)
    h.refuse("NO_ACTIVE_DEVICE", "repeat", state="off")
    h.refuse("NO_ACTIVE_DEVICE", "shuffle", state=True)
    h.refuse("NO_ACTIVE_DEVICE", "queue_add", uri=turi(1))
    h.do("play", uris=[turi(1)], device_id="d0")
    h.refuse("NO_ACTIVE_DEVICE", "pause", device_id="d1")          # d1 is not the active device
    h.refuse("NOT_FOUND", "pause", device_id="nope")


def test_device_limit():
    h = H()
    for i in range(50):
        h.do("register", device_id=f"d{i}")
    h.refuse("LIMIT_EXCEEDED", "register", device_id="one-too-many")


def test_snapshot_mid_log_plus_tail_reproduces_state():
    h = playing_album()
    h.advance(5_000)
    h.do("queue_add", uri=turi(21))
    mid_snap, mid_len = rt(h.e.snapshot()), len(h.log)
    h.do("shuffle", state=True)
    h.advance(DUR)
    h.tick()
    h.do("progress", event_id="a", device_id="d0", uri=turi(21), ms_played=40_000)
    h.do("transfer", device_ids=["d1"])
    h.sys("disconnect", device_id="d1", origin=("gw1", "c1"))
    e2 = h.replayed(snapshot=mid_snap, records=h.log[mid_len:])
    assert rt(e2.snapshot()) == rt(h.e.snapshot())
    assert e2.cluster("x", h.now) == h.e.cluster("x", h.now)
    h.check_replay()


# -- property: random command sequences; refusals never change state; replay always reproduces -----------------
OPS = st.sampled_from([
    ("register", lambda d: {"device_id": d}),
    ("heartbeat", lambda d: {"device_id": d}),
    ("play", lambda d: {"device_id": d, "context_uri": album_uri(0)}),
    ("play", lambda d: {"uris": [turi(7), turi(8), turi(1)]}),
    ("play", lambda d: {"context_uri": pl_uri(2)}),             # the playlist: entries(4, 3), served
    ("play", lambda d: {}),
    ("pause", lambda d: {}),
    ("next", lambda d: {}),
    ("previous", lambda d: {}),
    ("seek", lambda d: {"position_ms": 95_000}),
    ("repeat", lambda d: {"state": "context"}),
    ("repeat", lambda d: {"state": "track"}),
    ("repeat", lambda d: {"state": "off"}),
    ("shuffle", lambda d: {"state": True}),
    ("shuffle", lambda d: {"state": False}),
    ("volume", lambda d: {"volume_percent": 101}),
    ("volume", lambda d: {"volume_percent": 30, "device_id": d}),
    ("transfer", lambda d: {"device_ids": [d], "play": True}),
    ("queue_add", lambda d: {"uri": turi(22)}),
    ("progress", lambda d: {"event_id": f"ev-{d}", "device_id": d, "uri": turi(7), "ms_played": 30_000}),
    ("disconnect", lambda d: {"device_id": d}),
    ("context_changed", lambda d: {"context_uri": pl_uri(2), "entries": entries(3, 4) + [["n", turi(9)]]}),
    ("tick", None),
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(OPS, st.sampled_from(["d0", "d1", "d2"]), st.integers(0, 120_000)), max_size=40))
def test_random_sequences_refusals_are_clean_and_replay_reproduces(steps):
    h = setup()
    h.playlist(2, entries(4, 3))
    for (op, mk), dev, dt in steps:
        h.advance(dt)
        if op == "tick":
            h.tick()
            continue
        args = mk(dev)
        before = rt(h.e.snapshot())
        n_log = len(h.log)
        try:
            if op in ("disconnect", "context_changed"):
                h.sys(op, **args)
            else:
                h.do(op, origin=("gw1", f"c{dev[1]}"), **args)
        except SyncopateError:
            assert rt(h.e.snapshot()) == before and len(h.log) == n_log
        # invariants
        p = h.e.p
        assert -1 <= p["order_pos"] < max(1, len(p["tracks"]))
        assert h.e.active is None or h.e.devices[h.e.active]["online"]
        assert not p["playing"] or h.e.active is not None
    h.check_replay()


# == through the real host: records and snapshots survive msgpack, a restart keeps acknowledged state ==========
class SmallSnapshots(DeviceGroupEntity):
    snapshot_every = 5


async def test_through_the_host_restart_keeps_acknowledged_state():
    from actors.host import EntityHost
    from storage.memory import MemoryStore

    clock = [T0 / 1000]
    effects = []
    store = MemoryStore()
    env = Env(catalog=CAT)

    asks = {(PLAYLIST, pl_id(3), "entries"): {"entries": entries(6), "snapshot_id": "s1"},   # the play below
            ("account", USER, "market"): {"country": "US", "as_of": 0}}                       # its market

    def dispatch(cmd):
        if (cmd.kind, cmd.entity_id, cmd.op) in asks:
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(Reply(1, asks[(cmd.kind, cmd.entity_id, cmd.op)]))
            return fut
        effects.append(cmd)
        return None

    def host():
        return EntityHost("h0", store, {DEVICE_GROUP: SmallSnapshots}, env, dispatch=dispatch,
                          clock=lambda: clock[0], idle_timeout_s=3600)

    h1 = host()
    await h1.start()
    me = Principal(USER)

    async def call(h, op, origin=None, principal=me, **args):
        return (await h.call(Command(DEVICE_GROUP, USER, op, args, principal, origin=origin)))[0]

    for i in range(3):
        await call(h1, "register", origin=("gw1", f"c{i}"), device_id=f"d{i}", name=f"D{i}")
    await call(h1, "play", device_id="d0", context_uri=pl_uri(3))
    clock[0] += 12.5
    await call(h1, "queue_add", uri=turi(22))
    await call(h1, "shuffle", state=True)
    await call(h1, "transfer", device_ids=["d2"])
    clock[0] += 31
    await call(h1, "progress", event_id="x1", device_id="d2", uri=h1.slots[f"{DEVICE_GROUP}:{USER}"].entity.p["uri"],
               ms_played=31_000)
    await h1.drain()
    # the counted report is also a listening event for the pipeline (docs/events.md)
    assert [(c.op, c.entity_id) for c in effects] == [("add_listener", pl_id(3)), ("publish", USER)]
    before = await call(h1, "state")
    snap_before = rt(h1.slots[f"{DEVICE_GROUP}:{USER}"].entity.snapshot())
    assert store._snapshots, "compaction ran"
    await h1.close(passivate=False)                      # killed: no final snapshot

    h2 = host()
    await h2.start()
    after = await call(h2, "state")
    assert after == before and after["progress_ms"] == 43_500 and after["device"]["id"] == "d2"
    assert rt(h2.slots[f"{DEVICE_GROUP}:{USER}"].entity.snapshot()) == snap_before
    dup = await call(h2, "progress", event_id="x1", device_id="d2", uri=after["uri"], ms_played=31_000)
    assert dup["duplicate"]
    await h2.close(passivate=False)
