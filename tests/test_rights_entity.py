"""Rights in the device group (docs/rights.md): a track not licensed in the user's market is refused
when asked for and skipped inside a context and the queue; a catalog reload that takes the playing
track down moves playback on (and says why); the group's market is the account's, told by the
account's `market_changed` (actors/devicegroup_market.py), never the command's. On the real
EntityHost with a controlled clock."""
from __future__ import annotations

import pytest

from actors.devicegroup import DeviceGroupEntity
from actors.entity import SYSTEM, Env, Principal
from catalog.core import Catalog
from protocols.errors import ErrorCode, SyncopateError
from tests.support.catalog import CatalogBuilder, tid, turi
from tests.support.entities import EntityDriver

USER = "alice"
T0 = 1_700_000_000_000
DUR = 100_000
ALBUM = "a" + "0" * 21
ARTIST = "r" + "0" * 21
SE_ONLY = {"SE", "NO"}          # tracks 2 and 4 of the album: licensed in SE and NO only


def build(removed: set[int] = frozenset(), markets: dict[int, set] | None = None) -> Catalog:
    markets = {2: SE_ONLY, 4: SE_ONLY} if markets is None else markets
    b = CatalogBuilder()
    b.artist(ARTIST, "Artist")
    b.album(ALBUM, [ARTIST], "Album")
    for i in range(6):
        if i not in removed:
            b.track(tid(i), ALBUM, name=f"Song {i}", duration_ms=DUR, markets=markets.get(i))
    return b.build()


class G:
    def __init__(self) -> None:
        self.cat = build()
        self.env = Env(catalog=self.cat, config={"connect_heartbeat_timeout_ms": 10**12,
                                                 "connect_offline_grace_ms": 10**12})
        self.d = EntityDriver(DeviceGroupEntity, USER, self.env, now_ms=T0)
        self.d.command("register", {"device_id": "d0", "name": "Laptop", "type": "computer"},
                       principal=Principal(USER), origin=("gw1", "c0"))
        self.account_version = 0
        self.country("US")

    def country(self, code: str):
        """The account's country set (its effect on the group, as the account's outbox sends it)."""
        self.account_version += 1
        return self.d.command("market_changed", {"country": code, "as_of": self.account_version}, principal=SYSTEM,
                              op_id=f"account:{USER}@{self.account_version}:market")

    def do(self, op, **args):
        return self.d.command(op, args, principal=Principal(USER))

    def refuse(self, code, op, principal=None, **args):
        before = self.d.e.snapshot()
        n = len(self.d.entries())
        with pytest.raises(SyncopateError) as ei:
            if principal is None:
                self.do(op, **args)
            else:
                self.d.command(op, args, principal=principal)
        assert ei.value.code == ErrorCode(code), ei.value
        assert self.d.e.snapshot() == before and len(self.d.entries()) == n
        return ei.value

    @property
    def p(self):
        return self.d.e.p

    def cluster(self):
        return self.d.pushes[-1].payload


def test_a_track_not_licensed_in_the_market_is_refused_with_the_reason():
    g = G()
    err = g.refuse("TRACK_UNAVAILABLE", "play", device_id="d0", uris=[turi(2)])
    assert err.details == {"uri": turi(2), "restriction": "market", "market": "US"}
    assert err.status == 403
    # an offset naming it inside a context is refused too (the listener asked for that track)
    g.refuse("TRACK_UNAVAILABLE", "play", device_id="d0", context_uri=f"spotify:album:{ALBUM}",
             offset={"position": 2})
    # in Sweden it plays
    g.country("SE")
    g.do("play", device_id="d0", uris=[turi(2)])
    assert g.p["uri"] == turi(2) and g.p["market"] == "SE"


def test_a_market_in_the_command_is_ignored():
    g = G()
    err = g.refuse("TRACK_UNAVAILABLE", "play", market="SE", device_id="d0", uris=[turi(2)])
    assert err.details["market"] == "US"
    g.do("play", market="SE", device_id="d0", context_uri=f"spotify:album:{ALBUM}", offset={"position": 1})
    assert g.p["market"] == "US" and g.d.e.market.country == "US"
    g.do("next", market="SE")
    assert g.p["uri"] == turi(3) and g.p["market"] == "US"       # 2 skipped: not licensed in US
    assert g.cluster()["player"]["market"] == "US"


def test_a_market_notice_that_is_not_a_code_is_refused_and_only_the_system_sends_one():
    g = G()
    g.refuse("INVALID_FIELD", "market_changed", principal=SYSTEM, country="usa", as_of=9)
    g.refuse("BAD_REQUEST", "market_changed", principal=SYSTEM, country="SE", as_of=-1)      # out of range
    g.refuse("FORBIDDEN", "market_changed", principal=Principal(USER), country="SE", as_of=9)


def test_a_country_change_reaches_the_next_op_and_an_older_notice_changes_nothing():
    g = G()
    g.do("play", device_id="d0", context_uri=f"spotify:album:{ALBUM}", offset={"position": 1})
    out = g.country("SE")
    assert out.reply == {"changed": True} and g.d.e.market.as_of == 2
    assert out.events[-1].payload["player"]["market"] == "SE"
    assert out.events[-1].payload["reason"] == "player_state_changed"
    assert out.events[-1].payload["next_tracks"] == [turi(2), turi(3)]     # 2 may play in Sweden
    g.do("next")
    assert g.p["uri"] == turi(2)
    # a notice of an older account version (re-sent, or overtaken) changes nothing
    n = len(g.d.entries())
    late = g.d.command("market_changed", {"country": "US", "as_of": 1}, principal=SYSTEM)
    assert late.reply == {"changed": False} and late.records == [] and len(g.d.entries()) == n
    assert g.p["market"] == "SE"


def test_a_country_where_the_playing_track_may_not_play_moves_on_as_a_takedown():
    g = G()
    g.country("SE")
    g.do("play", device_id="d0", context_uri=f"spotify:album:{ALBUM}", offset={"position": 2})
    assert g.p["uri"] == turi(2) and g.p["playing"]
    g.d.now += 5000
    out = g.country("US")
    assert g.p["uri"] == turi(3) and g.p["playing"] and g.p["position_ms"] == 0
    push = out.events[-1].payload
    assert push["reason"] == "track_unavailable"
    assert push["unavailable"] == {"uri": turi(2), "reason": "market", "market": "US"}


def test_inside_a_context_unplayable_tracks_are_skipped_by_next_and_by_auto_advance():
    g = G()
    g.do("play", device_id="d0", context_uri=f"spotify:album:{ALBUM}", offset={"position": 1})
    assert g.p["uri"] == turi(1)
    assert g.cluster()["next_tracks"] == [turi(3), turi(5)]     # the prefetch skips them too
    g.do("next")
    assert g.p["uri"] == turi(3)                                # 2 skipped
    g.d.now += DUR                                              # 3 ends by itself
    g.d.tick()
    assert g.p["uri"] == turi(5) and g.p["playing"]             # 4 skipped
    assert g.do("queue").reply["queue"] == []
    g.do("previous")
    assert g.p["uri"] == turi(3)
    # the user queue is skipped over as well; a queued unplayable track is refused up front
    g.refuse("TRACK_UNAVAILABLE", "queue_add", uri=turi(4))


def test_a_context_without_offset_starts_at_its_first_playable_track():
    g = G()
    g.do("play", device_id="d0", uris=[turi(2), turi(4), turi(1)])
    assert g.p["uri"] == turi(1)
    g.refuse("TRACK_UNAVAILABLE", "play", device_id="d0", uris=[turi(2), turi(4)])


def test_the_market_follows_the_user_and_is_replayed():
    g = G()
    g.country("SE")
    g.do("play", device_id="d0", context_uri=f"spotify:album:{ALBUM}")
    g.d.now += 1000
    g.country("US")                    # the user's country changed: the next skip uses the new one
    g.do("next")
    assert g.p["market"] == "US" and g.p["uri"] == turi(1)
    g.do("next")
    assert g.p["uri"] == turi(3)
    e2 = DeviceGroupEntity(USER, g.env)
    for _, recs in g.d.entries():
        for r in recs:
            e2.apply(r)
    assert e2.p == g.p and e2.market == g.d.e.market


def _takedown(g: G, cat: Catalog):
    g.cat.replace_with(cat)
    return g.d.command("catalog_changed", {}, principal=SYSTEM)


def test_a_takedown_of_the_playing_track_moves_a_playing_group_on_and_says_why():
    g = G()
    g.do("play", device_id="d0", context_uri=f"spotify:album:{ALBUM}", offset={"position": 1})
    g.d.now += 5000
    out = _takedown(g, build(removed={1}))
    assert g.p["uri"] == turi(3) and g.p["playing"]
    push = out.events[-1].payload
    assert push["reason"] == "track_unavailable"
    assert push["unavailable"] == {"uri": turi(1), "reason": "removed", "market": "US"}
    assert push["player"]["track_uri"] == turi(3)


def test_a_market_withdrawn_from_the_playing_track_reaches_the_group():
    g = G()
    g.do("play", device_id="d0", uris=[turi(0), turi(1)])
    out = _takedown(g, build(markets={0: {"SE"}, 2: SE_ONLY, 4: SE_ONLY}))
    assert out.events[-1].payload["unavailable"]["reason"] == "market"
    assert g.p["uri"] == turi(1)


def test_a_takedown_with_nothing_left_to_play_stops_and_resume_is_refused():
    g = G()
    g.do("play", device_id="d0", uris=[turi(0)])
    out = _takedown(g, build(removed={0}))
    assert out.events[-1].payload["reason"] == "track_unavailable"
    assert g.p["uri"] is None and not g.p["playing"]
    g.refuse("NO_SPECIFIC_TRACK", "play")


def test_a_paused_track_taken_down_cannot_be_resumed():
    g = G()
    g.do("play", device_id="d0", uris=[turi(0)])
    g.do("pause")
    g.cat.replace_with(build(markets={0: {"SE"}}))       # reloaded, the group not told yet
    g.refuse("TRACK_UNAVAILABLE", "play")


def test_a_reload_that_leaves_the_playing_track_alone_changes_nothing():
    g = G()
    g.do("play", device_id="d0", uris=[turi(0), turi(1)])
    n = len(g.d.entries())
    out = _takedown(g, build(removed={5}))
    assert out.events == [] and len(g.d.entries()) == n


# == autoplay ======================================================================================
A2, B1, ARTIST_B = "b" + "0" * 21, "c" + "0" * 21, "s" + "0" * 21


def autoplay_catalog() -> Catalog:
    """Artist R: album ALBUM (tracks 0-2) and A2 (10-12; 11 SE-only); artist S: album B1 (20-22)."""
    b = CatalogBuilder()
    b.artist(ARTIST, "R")
    b.artist(ARTIST_B, "S")
    b.album(ALBUM, [ARTIST], "One")
    b.album(A2, [ARTIST], "Two")
    b.album(B1, [ARTIST_B], "Other")
    for i in range(3):
        b.track(tid(i), ALBUM, duration_ms=DUR, popularity=10 + i)
    for i, pop in zip((10, 11, 12), (30, 90, 50)):
        b.track(tid(i), A2, duration_ms=DUR, popularity=pop, markets={"SE"} if i == 11 else None)
    for i, pop in zip((20, 21, 22), (60, 80, 70)):
        b.track(tid(i), B1, duration_ms=DUR, popularity=pop)
    return b.build()


def ap_group() -> G:
    g = G()
    g.cat.replace_with(autoplay_catalog())
    return g


def test_without_autoplay_the_end_of_a_context_rewinds_paused():
    g = ap_group()
    g.do("play", device_id="d0", context_uri=f"spotify:album:{ALBUM}", offset={"position": 2})
    g.d.now += DUR
    g.d.tick()
    assert g.p["uri"] == turi(0) and not g.p["playing"] and not g.p["autoplaying"]


def test_autoplay_continues_with_the_artist_then_popular_tracks_playable_here():
    g = ap_group()
    g.do("autoplay", state=True)
    g.do("play", device_id="d0", context_uri=f"spotify:album:{ALBUM}", offset={"position": 2})
    g.d.now += DUR
    out = g.d.tick()
    p = g.p
    assert p["playing"] and p["autoplaying"] and p["autoplay_from"] == f"spotify:album:{ALBUM}"
    assert p["context_uri"] is None
    # the same artist's most popular (11 is not licensed in US), then the catalog's most popular
    assert [u for _, u in p["tracks"]] == [turi(12), turi(10), turi(21), turi(22), turi(20)]
    assert p["uri"] == turi(12)
    push = out.events[-1].payload
    assert push["player"]["autoplay"] == {"enabled": True, "active": True, "from": f"spotify:album:{ALBUM}"}
    # in Sweden 11 is playable, and first (the artist's most popular)
    g2 = ap_group()
    g2.country("SE")
    g2.do("autoplay", state=True)
    g2.do("play", device_id="d0", uris=[turi(0)])
    g2.d.now += DUR
    g2.d.tick()
    assert g2.p["uri"] == turi(11) and g2.p["autoplay_from"] is None and g2.p["autoplaying"]


def test_next_at_the_end_of_a_context_goes_on_into_autoplay_and_a_new_play_ends_it():
    g = ap_group()
    g.do("play", device_id="d0", uris=[turi(2)])
    g.refuse("NO_NEXT_TRACK", "next")
    g.do("autoplay", state=True)
    assert "skipping_next" not in g.do("state").reply["disallows"]
    g.do("next")
    assert g.p["autoplaying"] and g.p["uri"] == turi(12)
    g.do("play", device_id="d0", uris=[turi(0)])
    assert not g.p["autoplaying"] and g.p["autoplay_from"] is None
    g.do("autoplay", state=False)
    g.refuse("NO_NEXT_TRACK", "next")


def test_autoplay_is_a_setting_a_free_user_may_change_and_it_is_replayed():
    g = ap_group()
    g.d.command("autoplay", {"state": True}, principal=Principal(USER, "free"))
    assert g.p["autoplay"] is True
    g.do("play", device_id="d0", uris=[turi(2)])
    g.d.now += DUR
    g.d.tick()
    e2 = DeviceGroupEntity(USER, g.env)
    for _, recs in g.d.entries():
        for r in recs:
            e2.apply(r)
    assert e2.p == g.p


def test_a_live_play_is_recorded_with_the_market_it_played_in():
    from protocols.listening import ListeningEvent
    g = G()
    g.country("SE")
    g.do("play", device_id="d0", uris=[turi(2)])
    g.d.now += 40_000
    g.d.command("progress", {"event_id": "e1", "device_id": "d0", "uri": turi(2), "ms_played": 35_000},
                principal=Principal(USER))
    pub = [ListeningEvent.from_wire(w) for c in g.d.effects if "events" in c.args for w in c.args["events"]]
    assert [(e.track_uri, e.market, e.source) for e in pub] == [(turi(2), "SE", "live")]


def test_an_uploaded_play_without_a_market_takes_the_groups_and_one_with_keeps_its_own():
    from protocols.listening import ListeningEvent
    g = G()
    g.country("SE")
    g.do("play", device_id="d0", uris=[turi(0)])
    h = T0 - 3_600_000
    evs = [{"event_id": "u1", "device_id": "d0", "uri": turi(0), "played_at_ms": h, "ms_played": 60_000},
           {"event_id": "u2", "device_id": "d0", "uri": turi(3), "played_at_ms": h + 200_000, "ms_played": 60_000,
            "market": "NO"}]
    out = g.d.command("upload_events", {"events": evs}, principal=Principal(USER))
    assert [r["status"] for r in out.reply["results"]] == ["accepted", "accepted"]
    pub = [ListeningEvent.from_wire(w) for c in g.d.effects if "events" in c.args for w in c.args["events"]]
    assert [(e.event_id, e.market) for e in pub] == [("u1", "SE"), ("u2", "NO")]
