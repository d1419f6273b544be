"""gateway/presenters.py: the device group's domain values as the shapes clients have always read."""
from __future__ import annotations

from gateway import presenters as pr

DEV = {"id": "d0", "name": "Laptop", "type": "computer", "volume_percent": 40, "supports_volume": True,
       "is_restricted": False, "online": True, "active": False}


def test_device_object_is_the_connect_shape_in_its_order():
    out = pr.device_object(DEV)
    assert out == {"id": "d0", "is_active": False, "is_private_session": False, "is_restricted": False,
                   "name": "Laptop", "type": "computer", "volume_percent": 40,
                   "supports_volume": True, "is_online": True}
    assert list(out) == ["id", "is_active", "is_private_session", "is_restricted", "name", "type",
                         "volume_percent", "supports_volume", "is_online"]


def test_context_hrefs_follow_the_base():
    assert pr.context_object("spotify:album:a1", pr.WS_BASE) == {
        "type": "album", "uri": "spotify:album:a1", "href": "https://api.spotify.com/v1/albums/a1",
        "external_urls": {"spotify": "https://open.spotify.com/album/a1"}}
    assert pr.context_object("spotify:playlist:p", "http://h:1/v1")["href"] == "http://h:1/v1/playlists/p"
    assert pr.context_object(None, pr.WS_BASE) is None


def test_playing_and_cluster_shapes_without_catalog():
    p = {"device": dict(DEV, active=True), "repeat": "off", "shuffle": False, "context_uri": "spotify:album:a1",
         "timestamp": 5, "progress_ms": 7, "is_playing": True, "uri": "spotify:track:t1",
         "disallows": {"resuming": True}}
    out = pr.playing(None, p, pr.WS_BASE)
    assert list(out) == ["device", "repeat_state", "shuffle_state", "context", "timestamp", "progress_ms",
                         "is_playing", "item", "currently_playing_type", "actions"]
    assert out["device"]["is_active"] and out["actions"] == {"disallows": {"resuming": True}}
    assert out["item"] == {"uri": "spotify:track:t1", "type": "track", "name": None, "duration_ms": 0,
                           "artists": [], "album": None}
    c = {"active_device_id": None, "devices": [DEV], "player": {"track_uri": None, "context": None},
         "revision": 1, "heartbeat_interval_ms": 3}
    out = pr.cluster(None, c)
    assert out["devices"] == [pr.device_object(DEV)] and list(out["player"]) == ["track", "context"]
    assert out["player"]["track"] is None and out["heartbeat_interval_ms"] == 3


def test_recently_played_paging():
    r = {"plays": [{"uri": "spotify:track:t2", "played_at_ms": 2_000, "context_uri": None},
                   {"uri": "spotify:track:t1", "played_at_ms": 1_001, "context_uri": None}],
         "limit": 2, "more": True, "direction": "before", "total": 9}
    out = pr.recently_played(None, r, "http://h/v1")
    assert out["cursors"] == {"after": "2000", "before": "1001"}
    assert out["next"] == "http://h/v1/me/player/recently-played?before=1001&limit=2"
    assert out["items"][1]["played_at"] == "1970-01-01T00:00:01.001Z" and out["total"] == 9


def test_the_clusters_track_is_the_catalogs_track_object_cut_down():
    """track_meta reads the catalog's records directly: it must say what the catalog's own Spotify
    track object says, for every track of a catalog, in a market where it plays and one where not."""
    from catalog import Catalog
    cat = Catalog.generated(seed=3, tracks=400)
    for t in cat.tracks:
        obj = cat.track_object(t)
        for market in (None, "US", "JP"):
            assert pr.track_meta(cat, t.uri, market) == {
                "uri": t.uri, "id": t.id, "name": t.name, "duration_ms": t.duration_ms,
                "artists": [{"name": a["name"], "uri": a["uri"]} for a in obj["artists"]],
                "album": {"name": obj["album"]["name"], "uri": obj["album"]["uri"], "images": obj["album"]["images"]},
                "is_playable": t.playable_in(market)}
    assert pr.track_meta(cat, "spotify:track:" + "0" * 22)["id"] is None
