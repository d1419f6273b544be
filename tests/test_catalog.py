"""Catalog: generation, lookups, search, the file format, and the REST endpoints (tiny app)."""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import subprocess
import sys
import time
import warnings
from types import SimpleNamespace

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from catalog import Album, Artist, Catalog, Track, require
from catalog.generate import make_id
from gateway import rest_catalog
from gateway.http import CTX, error_response
from protocols.errors import ErrorCode, SyncopateError
from protocols.uris import is_id

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return Catalog.generated()


def _digest(c: Catalog) -> str:
    return hashlib.sha256(orjson.dumps(c.to_dict())).hexdigest()


# -- generation ------------------------------------------------------------------------------

def test_generated_is_deterministic_across_instances_and_processes(cat):
    assert _digest(Catalog.generated()) == _digest(cat)
    code = ("from catalog import Catalog; import hashlib, orjson; "
            "print(hashlib.sha256(orjson.dumps(Catalog.generated().to_dict())).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() == _digest(cat)


def test_seeds_differ():
    a, b = Catalog.generated(seed=1, tracks=200), Catalog.generated(seed=2, tracks=200)
    assert not set(a.track_ids) & set(b.track_ids)
    assert [t.name for t in a.tracks] != [t.name for t in b.tracks]


def test_generated_sizes_and_shapes(cat):
    assert len(cat) == len(cat.track_ids) == 10_000
    assert 900 <= len(cat.albums) <= 1100
    assert len(cat.artists) == 300
    ids = [x.id for x in (*cat.tracks, *cat.albums, *cat.artists)]
    assert len(set(ids)) == len(ids) and all(is_id(i) for i in ids)
    for t in cat.tracks:
        assert t.uri == f"spotify:track:{t.id}"
        assert 90_000 <= t.duration_ms <= 420_000 and 0 <= t.popularity <= 100
        assert t.name and t.artist_ids and all(cat.artist(a) for a in t.artist_ids)
    for al in cat.albums:
        tracks = cat.album_tracks(al.id)
        assert [t.track_number for t in tracks] == list(range(1, len(tracks) + 1))
        assert all(t.album_id == al.id for t in tracks) and al.album_type in ("album", "single", "compilation")
    assert all(cat.artist_albums(a.id) for a in cat.artists)
    assert len({t.name for t in cat.tracks}) > 3000


def test_generated_is_fast_and_compact():
    t0 = time.perf_counter()
    Catalog.generated(seed=7)
    assert time.perf_counter() - t0 < 1.5  # target 0.3 s (docs/catalog.md); loose for a shared CI box
    small = Catalog.generated(seed=7, tracks=10)
    for obj in (small.track(small.track_ids[0]), next(iter(small.albums)), next(iter(small.artists))):
        assert not hasattr(obj, "__dict__")


def test_generated_rejects_bad_size():
    with pytest.raises(ValueError):
        Catalog.generated(tracks=0)


def test_pickles(cat):
    import pickle
    small = Catalog.generated(seed=3, tracks=300)
    small.search("a", "track")
    assert _digest(pickle.loads(pickle.dumps(small))) == _digest(small)


# -- lookups ---------------------------------------------------------------------------------

def test_lookups(cat):
    t = cat.track(cat.track_ids[123])
    assert isinstance(t, Track) and cat.track_by_uri(t.uri) is t
    al = cat.album(t.album_id)
    assert isinstance(al, Album) and cat.album_by_uri(al.uri) is al and t.id in al.track_ids
    ar = cat.artist(t.artist_ids[0])
    assert isinstance(ar, Artist) and cat.artist_by_uri(ar.uri) is ar
    assert require(cat, t.uri) is t and require(cat, al.uri, "album") is al and require(None, t.uri) is None
    unknown = "0" * 22
    assert cat.track(unknown) is None and cat.album(unknown) is None and cat.artist(unknown) is None
    assert cat.track_by_uri(f"spotify:track:{unknown}") is None
    assert cat.album_by_uri(f"spotify:album:{unknown}") is None
    assert cat.album_tracks(unknown) == [] and cat.artist_albums(unknown) == []
    dates = [a.release_date for a in cat.artist_albums(ar.id)]
    assert dates == sorted(dates, reverse=True)


@pytest.mark.parametrize("uri", ["spotify:track:short", "spotify:album:" + "A" * 22, "track:" + "A" * 22,
                                 "spotify:track:" + "A" * 21 + "!", "", None, 42])
def test_track_by_uri_malformed(cat, uri):
    with pytest.raises(SyncopateError) as ei:
        cat.track_by_uri(uri)
    assert ei.value.code is ErrorCode.INVALID_URI


def test_require_unknown(cat):
    with pytest.raises(SyncopateError) as ei:
        require(cat, "spotify:track:" + "0" * 22)
    assert ei.value.code is ErrorCode.UNKNOWN_URI


def test_artist_appears_on_and_top_tracks(cat):
    feat = next(t for t in cat.tracks if set(t.artist_ids) - set(cat.album(t.album_id).artist_ids))
    guest = next(a for a in feat.artist_ids if a not in cat.album(feat.album_id).artist_ids)
    assert cat.album(feat.album_id) in cat.artist_appears_on(guest)
    top = cat.artist_top_tracks(guest)
    assert 0 < len(top) <= 10 and all(guest in t.artist_ids for t in top)
    assert [t.popularity for t in top] == sorted((t.popularity for t in top), reverse=True)


# -- Spotify objects (checked against tekore's strict models) --------------------------------

def test_objects_match_spotify_models(cat):
    tk = pytest.importorskip("tekore")
    t = cat.track(cat.track_ids[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tekore warns on unknown attributes
        full = tk.model.FullTrack(**cat.track_object(t))
        tk.model.SimpleTrack(**cat.simplified_track_object(t))
        album = tk.model.FullAlbum(**cat.album_object(cat.album(t.album_id)))
        tk.model.SimpleAlbum(**cat.album_object(cat.album(t.album_id), full=False))
        tk.model.FullArtist(**cat.artist_object(cat.artist(t.artist_ids[0])))
    assert full.uri == t.uri and full.album.id == t.album_id and full.duration_ms == t.duration_ms
    assert album.tracks.total == len(cat.album(t.album_id).track_ids)
    obj = cat.track_object(t, base_url="http://x/v1")
    assert obj["href"] == f"http://x/v1/tracks/{t.id}"
    assert obj["external_urls"] == {"spotify": f"https://open.spotify.com/track/{t.id}"}
    assert obj["is_local"] is False and obj["type"] == "track" and obj["album"]["images"] == []


# -- search ----------------------------------------------------------------------------------

def _small_dict() -> dict:
    A = [make_id(99, "artist", i) for i in range(3)]
    L = [make_id(99, "album", i) for i in range(3)]
    T = [make_id(99, "track", i) for i in range(7)]
    return {
        "format": "syncopate-catalog", "version": 1,
        "artists": [{"id": A[0], "name": "Daft Punk", "genres": ["french-house"], "popularity": 90},
                    {"id": A[1], "name": "Björn Lindqvist", "popularity": 50},
                    {"id": A[2], "name": "The Electric Foxes"}],
        "albums": [{"id": L[0], "name": "Discovery", "artist_ids": [A[0]], "release_date": "2001-03-12"},
                   {"id": L[1], "name": "Heart Songs", "artist_ids": [A[1]], "release_date": "1999"},
                   {"id": L[2], "name": "Electric", "artist_ids": [A[2]], "release_date": "1985-06",
                    "album_type": "single"}],
        "tracks": [
            {"id": T[0], "name": "One More Time", "artist_ids": [A[0]], "album_id": L[0], "duration_ms": 320357,
             "track_number": 1, "popularity": 80},
            {"id": T[1], "name": "Digital Love", "artist_ids": [A[0]], "album_id": L[0], "duration_ms": 301373,
             "track_number": 2, "popularity": 70},
            {"id": T[2], "name": "Electric Heart", "artist_ids": [A[1]], "album_id": L[1], "duration_ms": 200000,
             "track_number": 1, "popularity": 30},
            {"id": T[3], "name": "Heartbeat", "artist_ids": [A[1]], "album_id": L[1], "duration_ms": 200000,
             "track_number": 2, "popularity": 60},
            {"id": T[4], "name": "Don't Stop", "artist_ids": [A[1], A[0]], "album_id": L[1],
             "duration_ms": 200000, "track_number": 3, "popularity": 20, "explicit": True},
            {"id": T[5], "name": "Electric", "artist_ids": [A[2]], "album_id": L[2], "duration_ms": 100000,
             "track_number": 1, "popularity": 5},
            {"id": T[6], "name": "Heart", "artist_ids": [A[2]], "album_id": L[2], "duration_ms": 100000,
             "track_number": 2, "popularity": 1},
        ],
    }


@pytest.fixture(scope="module")
def small() -> Catalog:
    return Catalog.from_dict(_small_dict())


def _names(c: Catalog, q: str, kind: str = "track", limit: int = 50, offset: int = 0):
    items, total = c.search(q, kind, limit, offset)[kind]
    return [x.name for x in items], total


@pytest.mark.parametrize("q,expected", [
    ("heart", ["Heart", "Electric Heart", "Heartbeat"]),        # exact name, whole word, prefix
    ("HEART", ["Heart", "Electric Heart", "Heartbeat"]),
    ("heärt", ["Heart", "Electric Heart", "Heartbeat"]),
    ("electric", ["Electric", "Electric Heart", "Heart"]),      # "Heart" by The Electric Foxes
    ("elec hea", ["Electric Heart", "Heart"]),                   # every word must match
    ("hea elec", ["Electric Heart", "Heart"]),
    ("daft", ["One More Time", "Digital Love", "Don't Stop"]),  # by artist, then popularity
    ("don't", ["Don't Stop"]), ("dont", ["Don't Stop"]),
    ("bjorn stop", ["Don't Stop"]),
    ("xyz", []), ("heartbeats", []), ("!!!", []),
    ("artist:daft", ["One More Time", "Digital Love", "Don't Stop"]),
    ("artist:daft love", ["Digital Love"]),
    ('artist:"daft punk" album:disc', ["One More Time", "Digital Love"]),
    ("track:heart", ["Heart", "Electric Heart", "Heartbeat"]),
    ("year:1999", ["Heartbeat", "Electric Heart", "Don't Stop"]),
    ("heart year:1980-1990", ["Heart"]),
    ("heart year:19x", []),
])
def test_search_tracks(small, q, expected):
    assert _names(small, q) == (expected, len(expected))


def test_search_albums_and_artists(small):
    assert _names(small, "electric", "album") == (["Electric"], 1)
    assert _names(small, "bjorn", "album") == (["Heart Songs"], 1)
    assert _names(small, "BJÖRN", "artist") == (["Björn Lindqvist"], 1)
    assert _names(small, "punk daft", "artist") == (["Daft Punk"], 1)
    assert _names(small, "heart", "artist") == ([], 0)
    assert _names(small, "album:x", "artist") == ([], 0)           # field the type lacks
    assert _names(small, "year:1985", "album") == (["Electric"], 1)
    res = small.search("electric", "track,artist,album", 10, 0)
    assert list(res) == ["track", "artist", "album"]
    assert [a.name for a in res["artist"][0]] == ["The Electric Foxes"]


def test_search_paging(small, cat):
    assert _names(small, "heart", limit=1, offset=1) == (["Electric Heart"], 3)
    assert _names(small, "heart", limit=2, offset=2) == (["Heartbeat"], 3)
    assert _names(small, "heart", limit=5, offset=10) == ([], 3)
    assert _names(small, "heart", limit=0) == ([], 3)
    full, total = cat.search("the", "track", 50, 0)["track"]
    pages = [x for off in range(0, 150, 50) for x in cat.search("the", "track", 50, off)["track"][0]]
    assert total > 150 and pages[:50] == full and len(set(x.id for x in pages)) == 150
    again = Catalog.generated().search("the", "track", 50, 100)["track"][0]
    assert [x.id for x in again] == [x.id for x in pages[100:]]


@pytest.mark.parametrize("args", [("heart", "playlist"), ("heart", ""), ("heart", "track,show"), ("", "track"),
                                  ("  ", "track"), ("heart", "track", 51), ("heart", "track", -1),
                                  ("heart", "track", 10, 1001)])
def test_search_bad_arguments(small, args):
    with pytest.raises(SyncopateError) as ei:
        small.search(*args)
    assert ei.value.code is ErrorCode.BAD_REQUEST


# -- file format -------------------------------------------------------------------------------

def test_file_roundtrip(tmp_path, small):
    c = Catalog.generated(seed=5, tracks=500)
    path = tmp_path / "c.json"
    path.write_bytes(orjson.dumps(c.to_dict()))
    assert _digest(Catalog.from_file(path)) == _digest(c)
    gz = tmp_path / "c.json.gz"
    gz.write_bytes(gzip.compress(orjson.dumps(c.to_dict())))
    assert _digest(Catalog.from_file(gz)) == _digest(c)


def test_file_derives_defaults(small):
    d = _small_dict()
    heart = small.album(d["albums"][1]["id"])
    assert heart.release_date_precision == "year" and heart.album_type == "album"
    assert heart.popularity == 60                                  # best of its tracks
    assert small.artist(d["artists"][2]["id"]).popularity == 5
    assert small.artist(d["artists"][0]["id"]).popularity == 90    # given
    assert small.track(d["tracks"][0]["id"]).explicit is False


def test_file_track_order_from_track_numbers():
    d = _small_dict()
    d["tracks"][0]["track_number"], d["tracks"][1]["track_number"] = 2, 1
    c = Catalog.from_dict(d)
    assert [t.name for t in c.album_tracks(d["albums"][0]["id"])] == ["Digital Love", "One More Time"]


def _mutate(path: list, value):
    def f(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return f


BAD = {
    "missing field": (_mutate(["tracks", 2, "duration_ms"], KeyError), "tracks[2]: missing field(s) duration_ms"),
    "unknown field": (_mutate(["tracks", 1, "duration"], 5), "tracks[1]: unknown field(s) duration"),
    "bad id": (_mutate(["artists", 1, "id"], "nope"), "artists[1]: id must be a 22-character base62 id"),
    "duplicate id": (lambda d: d["tracks"][3].update(id=d["tracks"][0]["id"]), "tracks[3]: duplicate track id"),
    "unknown artist": (_mutate(["albums", 0, "artist_ids"], ["0" * 22]), "albums[0]: artist_ids names an unknown"),
    "empty artists": (_mutate(["tracks", 0, "artist_ids"], []), "tracks[0]: artist_ids must be a non-empty list"),
    "unknown album": (_mutate(["tracks", 4, "album_id"], "1" * 22), "tracks[4]: album_id names an unknown album"),
    "dup number": (_mutate(["tracks", 1, "track_number"], 1), "tracks[1]: album"),
    "duration": (_mutate(["tracks", 0, "duration_ms"], "3:20"), "tracks[0]: duration_ms must be an integer"),
    "negative": (_mutate(["tracks", 0, "duration_ms"], -5), "tracks[0]: duration_ms must be an integer"),
    "popularity": (_mutate(["tracks", 0, "popularity"], 101), "tracks[0]: popularity must be an integer in 0..100"),
    "explicit": (_mutate(["tracks", 0, "explicit"], "yes"), "tracks[0]: explicit must be true or false"),
    "blank name": (_mutate(["albums", 2, "name"], " "), "albums[2]: name must be a non-empty string"),
    "date": (_mutate(["albums", 0, "release_date"], "2001/03/12"), "albums[0]: release_date must be"),
    "album type": (_mutate(["albums", 0, "album_type"], "mixtape"), "albums[0]: album_type must be one of"),
    "genres": (_mutate(["artists", 0, "genres"], "house"), "artists[0]: genres must be a list"),
    "entry type": (_mutate(["tracks", 6], "x"), "tracks[6]: must be an object"),
    "section type": (_mutate(["albums"], {}), "'albums' must be a list"),
    "no tracks": (_mutate(["tracks"], []), "holds no tracks"),
    "version": (_mutate(["version"], 2), "unsupported version 2"),
    "format": (_mutate(["format"], "other"), "format must be 'syncopate-catalog'"),
    "top-level": (_mutate(["playlists"], []), "unknown top-level field(s) playlists"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_file_rejects_bad_entries(tmp_path, case):
    mutate, expected = BAD[case]
    d = _small_dict()
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_bytes(orjson.dumps(d))
    with pytest.raises(ValueError) as ei:
        Catalog.from_file(path)
    msg = str(ei.value)
    assert msg.startswith(str(path)) and expected in msg, msg
    if "[" in expected and case != "entry type":  # entry errors quote the entry itself
        assert '"name":' in msg


@pytest.mark.parametrize("content,expected", [(b"{not json", "not valid JSON"), (b"[]", "must be a JSON object")])
def test_file_rejects_bad_documents(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=expected):
        Catalog.from_file(path)


def test_file_missing(tmp_path):
    with pytest.raises(ValueError, match="cannot read catalog file"):
        Catalog.from_file(tmp_path / "absent.json")


def test_cli_export_and_check(tmp_path):
    from catalog.__main__ import main
    path = tmp_path / "out.json"
    assert main(["export", str(path), "--tracks", "50", "--seed", "4"]) == 0
    assert _digest(Catalog.from_file(path)) == _digest(Catalog.generated(seed=4, tracks=50))
    assert main(["check", str(path)]) == 0
    path.write_text("{}")
    assert main(["check", str(path)]) == 1


# -- REST ----------------------------------------------------------------------------------------

@web.middleware
async def _errors(request, handler):
    try:
        return await handler(request)
    except SyncopateError as err:
        return error_response(err)


@pytest.fixture(scope="module")
async def client(cat):
    app = web.Application(middlewares=[_errors])
    app[CTX] = SimpleNamespace(catalog=cat)
    rest_catalog.setup(app)
    async with TestClient(TestServer(app)) as c:
        yield c


async def _get(client, path, status=200):
    resp = await client.get(path)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def _error(client, path, status, reason):
    body = await _get(client, path, status)
    assert body["error"]["status"] == status and body["error"]["code"] == reason, body
    return body


async def test_rest_track(client, cat):
    tid = cat.track_ids[42]
    for path in (f"/v1/tracks/{tid}", f"/v1/tracks/{tid}/", f"/v1/tracks/{tid}?market=SE"):
        body = await _get(client, path)
        assert body["id"] == tid and body["uri"] == f"spotify:track:{tid}"
        assert body["href"] == str(client.make_url(f"/v1/tracks/{tid}"))
        assert body["album"]["id"] == cat.track(tid).album_id
    await _error(client, "/v1/tracks/notanid", 400, "INVALID_URI")
    await _error(client, "/v1/tracks/" + "0" * 22, 404, "NOT_FOUND")


async def test_rest_several_tracks(client, cat):
    ids = cat.track_ids[:3]
    body = await _get(client, f"/v1/tracks?ids={ids[0]},{'0' * 22},{ids[1]},{ids[2]}")
    assert [t and t["id"] for t in body["tracks"]] == [ids[0], None, ids[1], ids[2]]
    body = await _get(client, f"/v1/tracks/?ids={ids[0]}")
    assert len(body["tracks"]) == 1
    await _error(client, "/v1/tracks?ids=" + ",".join(cat.track_ids[:51]), 400, "BAD_REQUEST")
    await _error(client, "/v1/tracks?ids=", 400, "BAD_REQUEST")
    await _error(client, f"/v1/tracks?ids={ids[0]},bad", 400, "INVALID_URI")


async def test_rest_albums(client, cat):
    album = max(cat.albums, key=lambda a: len(a.track_ids))
    body = await _get(client, f"/v1/albums/{album.id}/")
    assert body["id"] == album.id and body["tracks"]["total"] == len(album.track_ids)
    assert [t["id"] for t in body["tracks"]["items"]] == list(album.track_ids)
    assert body["tracks"]["href"].startswith(str(client.make_url("/v1/albums/")))
    body = await _get(client, f"/v1/albums?ids={album.id},{'0' * 22}")
    assert body["albums"][0]["id"] == album.id and body["albums"][1] is None
    await _error(client, "/v1/albums?ids=" + ",".join(a.id for a in list(cat.albums)[:21]), 400, "BAD_REQUEST")
    await _error(client, "/v1/albums/x", 400, "INVALID_URI")
    await _error(client, "/v1/albums/" + "0" * 22, 404, "NOT_FOUND")


async def test_rest_album_tracks_paging(client, cat):
    album = max(cat.albums, key=lambda a: len(a.track_ids))
    seen, url = [], f"/v1/albums/{album.id}/tracks?limit=5"
    while url:
        page = await _get(client, url)
        assert page["limit"] == 5 and page["total"] == len(album.track_ids)
        seen += [t["id"] for t in page["items"]]
        assert all("album" not in t for t in page["items"])
        url = page["next"]
        if url:
            assert url.startswith("http://") and f"offset={page['offset'] + 5}" in url
            url = URL(url).path_qs
    assert seen == list(album.track_ids)
    page = await _get(client, f"/v1/albums/{album.id}/tracks/?offset=5&limit=5")
    assert page["previous"].endswith("offset=0&limit=5")
    await _error(client, f"/v1/albums/{album.id}/tracks?limit=51", 400, "BAD_REQUEST")
    await _error(client, f"/v1/albums/{album.id}/tracks?offset=x", 400, "BAD_REQUEST")
    await _error(client, "/v1/albums/" + "0" * 22 + "/tracks", 404, "NOT_FOUND")


async def test_rest_artists(client, cat):
    artist = max(cat.artists, key=lambda a: len(cat.artist_albums(a.id)))
    body = await _get(client, f"/v1/artists/{artist.id}")
    assert body["name"] == artist.name and body["genres"] == list(artist.genres)
    body = await _get(client, f"/v1/artists?ids={artist.id},{'0' * 22}")
    assert body["artists"][0]["id"] == artist.id and body["artists"][1] is None
    page = await _get(client, f"/v1/artists/{artist.id}/albums?limit=50")
    own = cat.artist_albums(artist.id)
    assert page["total"] == len(own) + len(cat.artist_appears_on(artist.id))
    assert {a["id"] for a in page["items"][:len(own)]} == {a.id for a in own}
    page = await _get(client, f"/v1/artists/{artist.id}/albums/?include_groups=single&limit=1")
    singles = [a for a in own if a.album_type == "single"]
    assert page["total"] == len(singles) and all(a["album_group"] == "single" for a in page["items"])
    if len(singles) > 1:
        assert "include_groups=single" in page["next"]
    await _error(client, f"/v1/artists/{artist.id}/albums?include_groups=bogus", 400, "BAD_REQUEST")
    top = await _get(client, f"/v1/artists/{artist.id}/top-tracks?market=US")
    assert [t["id"] for t in top["tracks"]] == [t.id for t in cat.artist_top_tracks(artist.id)]
    await _error(client, "/v1/artists/" + "0" * 22 + "/albums", 404, "NOT_FOUND")
    await _error(client, "/v1/artists/bad!", 400, "INVALID_URI")


async def test_rest_search(client, cat):
    body = await _get(client, "/v1/search?q=the&type=track,album,artist&limit=3")
    assert set(body) == {"tracks", "albums", "artists"}
    res = cat.search("the", "track,album,artist", 3, 0)
    for kind in ("track", "album", "artist"):
        page = body[kind + "s"]
        assert [x["id"] for x in page["items"]] == [x.id for x in res[kind][0]]
        assert page["total"] == res[kind][1] and page["limit"] == 3 and page["offset"] == 0
        assert page["previous"] is None
    assert "album_group" not in body["albums"]["items"][0] and "followers" in body["artists"]["items"][0]
    nxt = body["tracks"]["next"]
    assert "type=track" in nxt and "type=track%2C" not in nxt
    page2 = await _get(client, URL(nxt).path_qs)
    assert list(page2) == ["tracks"] and page2["tracks"]["offset"] == 3
    assert [x["id"] for x in page2["tracks"]["items"]] == [x.id for x in cat.search("the", "track", 3, 3)["track"][0]]
    edge = await _get(client, "/v1/search?q=the&type=track&limit=50&offset=1000")
    assert edge["tracks"]["next"] is None
    zero = await _get(client, "/v1/search/?q=the&type=artist&limit=0")
    assert zero["artists"]["items"] == [] and zero["artists"]["next"] is None and zero["artists"]["total"] > 0


@pytest.mark.parametrize("query", ["type=track", "q=&type=track", "q=a", "q=a&type=playlist", "q=a&type=track&limit=51",
                                   "q=a&type=track&offset=1001", "q=a&type=track&limit=x"])
async def test_rest_search_bad(client, query):
    await _error(client, f"/v1/search?{query}", 400, "BAD_REQUEST")


async def test_spotipy_speaks_to_it(client, cat):
    spotipy = pytest.importorskip("spotipy")
    sp = spotipy.Spotify(auth="test-token", requests_timeout=5, retries=0)
    sp.prefix = str(client.make_url("/v1/"))
    album = max(cat.albums, key=lambda a: len(a.track_ids))
    tid = album.track_ids[0]

    def run():
        out = {"track": sp.track(f"spotify:track:{tid}"), "tracks": sp.tracks([tid, album.track_ids[1]]),
               "album": sp.album(album.id), "artist_albums": sp.artist_albums(album.artist_ids[0], limit=2)}
        page = sp.album_tracks(album.id, limit=4)
        ids = [t["id"] for t in page["items"]]
        while page["next"]:
            page = sp.next(page)
            ids += [t["id"] for t in page["items"]]
        out["album_track_ids"] = ids
        res = sp.search("the", limit=5, type="track")
        out["search"] = res, sp.next(res["tracks"])
        return out

    out = await asyncio.to_thread(run)
    assert out["track"]["id"] == tid and [t["id"] for t in out["tracks"]["tracks"]] == list(album.track_ids[:2])
    assert out["album"]["id"] == album.id and out["album_track_ids"] == list(album.track_ids)
    assert len(out["artist_albums"]["items"]) <= 2
    first, second = out["search"]
    assert second["tracks"]["offset"] == 5 and first["tracks"]["total"] == second["tracks"]["total"]


def test_documented_example_loads():
    import re
    with open(os.path.join(ROOT, "docs", "catalog.md"), encoding="utf-8") as f:
        block = re.search(r"```json\n(.*?)```", f.read(), re.S).group(1)
    c = Catalog.from_dict(orjson.loads(block))
    assert c.track_by_uri("spotify:track:0DiWol3AO6WpXZgp0goxAV").name == "One More Time"
