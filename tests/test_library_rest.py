"""The library and sessions over REST (gateway/rest_library.py, gateway/rest_sessions.py), spoken
to by the real, unmodified clients: spotipy 2.26 (current surface: /me/library) and tekore 6
(classic surface: /me/tracks, /me/albums, /me/following, /playlists/{id}/followers).

spotipy and tekore are synchronous (requests / httpx): they run in a thread
(`asyncio.to_thread`) so the server, in-process on the test's loop, keeps serving. Most tests use
an in-process LocalServer; one goes through the real Ray server (`ray_server`).
"""
from __future__ import annotations

import asyncio
import random
import time
import warnings

import aiohttp
import orjson
import pytest

from actors.entity import Principal
from protocols.errors import ErrorCode, SyncopateError
from protocols.uris import BASE62
from tests.spotify_clients import spotipy_client, tekore_client
from tests.support.servers import memory_server

spotipy = pytest.importorskip("spotipy")
tk = pytest.importorskip("tekore")

_rng = random.Random(5)


def random_id() -> str:
    return "".join(_rng.choice(BASE62) for _ in range(22))


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    async with memory_server(tmp_path_factory, "librest", hosts=2) as srv:
        yield srv


def auth(server, user: str, **kw) -> dict:
    return {"Authorization": f"Bearer {server.auth.mint(user, **kw)}"}


async def call(server, kind, eid, op, args, user):
    return await server.gateway.ctx.call(kind, eid, op, args, principal=Principal(user))


async def library(server, user: str, kind: str) -> list[str]:
    """Every id of one type in the user's library, newest first (artists: id order)."""
    out, offset = [], 0
    while True:
        page = await call(server, "session", user, "library_list", {"type": kind, "offset": offset, "limit": 50}, user)
        out += [it["id"] for it in page["items"]]
        if page["next_offset"] is None:
            return out
        offset = page["next_offset"]


async def eventually(check, timeout: float = 5.0):
    """Wait for an asynchronous effect (e.g. the playlist telling the session) with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# -- through the real Ray server ---------------------------------------------------------------------
# First in the module on purpose: a sync test (and the ray_server setup) blocks the session's event
# loop, and an in-process server paused that way can hang in its teardown (Dispatcher.stop's cancel
# is swallowed by asyncio.wait_for in the liveness loop on Python 3.11; reported). Run here, no
# in-process server exists yet.

@pytest.mark.ray
def test_real_server_spotipy_and_tekore(ray_server, unique):
    from catalog import Catalog
    from gateway.auth import Auth
    token = Auth(ray_server.secret).mint(unique)
    cat = Catalog.generated()
    tracks = cat.track_ids[:25]
    sp, t = spotipy_client(ray_server.url, token), tekore_client(ray_server.url, token)
    sp.current_user_saved_tracks_add(tracks)
    page = t.saved_tracks(limit=10)
    assert page.total == 25 and [s.track.id for s in t.all_items(page)] == list(reversed(tracks))
    t.saved_tracks_delete(tracks[:5])
    assert sp.current_user_saved_tracks_contains(tracks[:6]) == [False] * 5 + [True]
    with pytest.raises(spotipy.SpotifyException) as e:
        sp.current_user_saved_tracks_add([random_id()])
    assert e.value.http_status == 400 and e.value.reason is None   # Spotify: reason only on player errors
    assert sp.current_user_saved_tracks(limit=1)["total"] == 20


# -- spotipy 2.26: the current surface -------------------------------------------------------------

async def test_spotipy_saves_lists_and_removes_tracks_albums_artists(server, cat, unique):
    tracks, albums = cat.track_ids[:45], [a.id for a in cat.albums][:3]
    artists = [a.id for a in cat.artists][:4]
    sp = spotipy_client(server.url, server.auth.mint(unique))

    def run():
        out = {}
        assert sp.current_user_saved_tracks_add(tracks[:40]) == {}       # 40: the most /me/library takes
        sp.current_user_saved_tracks_add(tracks[40:])
        sp.current_user_saved_tracks_add(tracks[:2])                      # saved twice = one item
        out["contains"] = sp.current_user_saved_tracks_contains(tracks[:2] + [cat.track_ids[500]])
        page = sp.current_user_saved_tracks(limit=20)
        out["first"] = page
        ids = [it["track"]["id"] for it in page["items"]]
        while page["next"]:
            page = sp.next(page)                                          # absolute, followable
            ids += [it["track"]["id"] for it in page["items"]]
        out["ids"] = ids
        out["prev"] = sp.previous(page)
        sp.current_user_saved_albums_add(albums)
        out["albums"] = sp.current_user_saved_albums_contains(albums + [cat.track_ids[0]])
        sp.user_follow_artists(artists)
        out["following"] = sp.current_user_following_artists(artists)
        out["followed"] = sp.current_user_followed_artists(limit=3)
        sp.current_user_saved_tracks_delete(tracks[:10])
        sp.current_user_saved_tracks_delete(tracks[:10])                  # removing absent items: fine
        sp.user_unfollow_artists(artists[:1])
        out["after"] = sp.current_user_saved_tracks(limit=50)
        out["following_after"] = sp.current_user_following_artists(artists)
        return out

    out = await asyncio.to_thread(run)
    assert out["contains"] == [True, True, False]
    first = out["first"]
    assert first["total"] == 45 and first["limit"] == 20 and first["offset"] == 0 and first["previous"] is None
    assert first["next"].startswith(server.url + "/v1/me/tracks?") and first["href"].startswith(server.url)
    item = first["items"][0]
    assert item["added_at"].endswith("Z") and item["track"]["type"] == "track"
    # newest first; a call's last uri lists first
    assert out["ids"] == list(reversed(tracks[40:])) + list(reversed(tracks[:40]))
    assert out["prev"]["offset"] == 20
    assert out["albums"] == [True, True, True, False]
    assert out["following"] == [True] * 4
    fa = out["followed"]["artists"]
    assert fa["total"] == 4 and [a["id"] for a in fa["items"]] == sorted(artists)[:3]
    assert fa["cursors"]["after"] == sorted(artists)[2] and fa["next"].startswith(server.url)
    assert out["after"]["total"] == 35
    assert {it["track"]["id"] for it in out["after"]["items"]} == set(tracks[10:])
    assert out["following_after"] == [False, True, True, True]


async def test_spotipy_follows_playlists_through_the_library(server, unique):
    """spotipy follows with PUT /me/library (the session tells the playlist) and unfollows with
    DELETE /playlists/{id}/followers (the playlist tells the session): one relation either way."""
    owner, pid = f"{unique}-owner", random_id()
    await call(server, "playlist", pid, "create", {"name": "Road trip"}, owner)
    sp = spotipy_client(server.url, server.auth.mint(unique))
    await asyncio.to_thread(sp.current_user_follow_playlist, pid)
    assert await asyncio.to_thread(sp.current_user_saved_items, [f"spotify:playlist:{pid}"]) == [True]

    async def followers(n):
        return (await call(server, "playlist", pid, "get", {}, owner))["followers"]["total"] == n
    await eventually(lambda: followers(1))

    await asyncio.to_thread(sp.current_user_unfollow_playlist, pid)
    assert (await call(server, "playlist", pid, "get", {}, owner))["followers"]["total"] == 0

    async def unfollowed():
        return await library(server, unique, "playlist") == []
    await eventually(unfollowed)


# -- tekore 6: the classic surface -----------------------------------------------------------------

async def test_tekore_classic_surface(server, cat, unique):
    tracks, albums = cat.track_ids[100:112], [a.id for a in cat.albums][10:14]
    artists = sorted(a.id for a in cat.artists)[20:27]
    t = tekore_client(server.url, server.auth.mint(unique))

    def run():
        out = {}
        with warnings.catch_warnings():
            warnings.simplefilter("error")        # tekore warns about attributes its models don't know
            t.saved_tracks_add(tracks)
            t.saved_tracks_add(tracks[:3])
            out["contains"] = t.saved_tracks_contains(tracks[:2] + [cat.track_ids[900]])
            page = t.saved_tracks(limit=5)
            out["page"] = page
            out["all_tracks"] = [s.track.id for s in t.all_items(page)]
            t.saved_tracks_delete(tracks[:2])
            out["after_delete"] = t.saved_tracks_contains(tracks[:3])
            t.saved_albums_add(albums)
            albums_page = t.saved_albums(limit=3)
            out["albums"] = [s.album.id for s in t.all_items(albums_page)]
            out["album_tracks"] = albums_page.items[0].album.tracks.total
            t.saved_albums_delete(albums[:1])
            out["albums_contains"] = t.saved_albums_contains(albums)
            t.artists_follow(artists)
            first = t.followed_artists(limit=3)
            out["first"] = first
            out["artists"] = [a.id for a in t.all_items(first)]
            t.artists_unfollow(artists[-2:])
            out["following"] = t.artists_is_following(artists)
        return out

    out = await asyncio.to_thread(run)
    assert out["contains"] == [True, True, False]
    page = out["page"]
    assert page.total == 12 and page.limit == 5 and page.next.startswith(server.url + "/v1/me/tracks")
    assert page.items[0].added_at.tzinfo is not None
    assert out["all_tracks"] == list(reversed(tracks))
    assert out["after_delete"] == [False, False, True]
    assert out["albums"] == list(reversed(albums)) and out["album_tracks"] > 0
    assert out["albums_contains"] == [False, True, True, True]
    first = out["first"]
    assert first.total == 7 and first.cursors.after == artists[2]
    assert first.next.startswith(server.url + "/v1/me/following?")
    assert out["artists"] == artists
    assert out["following"] == [True] * 5 + [False, False]
    # the same library, seen from the session entity
    assert await library(server, unique, "track") == list(reversed(tracks[2:]))


async def test_tekore_follows_and_unfollows_a_playlist(server, http, unique):
    owner, pid = f"{unique}-owner", random_id()
    await call(server, "playlist", pid, "create", {"name": "Focus"}, owner)
    t = tekore_client(server.url, server.auth.mint(unique))
    await asyncio.to_thread(t.playlist_follow, pid)
    assert (await call(server, "playlist", pid, "get", {}, owner))["followers"]["total"] == 1

    async def in_library(expected):
        return await library(server, unique, "playlist") == expected
    await eventually(lambda: in_library([pid]))          # the playlist tells the session (an effect)
    assert await asyncio.to_thread(t.playlist_is_following, pid, [unique, "someone-else"]) == [True, False]
    await asyncio.to_thread(t.playlist_follow, pid)      # following twice: one follower
    assert (await call(server, "playlist", pid, "get", {}, owner))["followers"]["total"] == 1
    await asyncio.to_thread(t.playlist_unfollow, pid)
    await eventually(lambda: in_library([]))
    assert await asyncio.to_thread(t.playlist_is_following, pid, [unique]) == [False]
    # no such playlist: 404, which tekore raises as its own NotFound
    with pytest.raises(tk.NotFound):
        await asyncio.to_thread(t.playlist_follow, random_id())
    r = await http.put(f"{server.url}/v1/playlists/{random_id()}/followers", headers=auth(server, unique))
    assert r.status == 404 and (await r.json())["error"]["code"] == "NOT_FOUND"
    assert await library(server, unique, "playlist") == []


async def test_both_generations_see_one_library(server, cat, unique):
    token = server.auth.mint(unique)
    sp, t = spotipy_client(server.url, token), tekore_client(server.url, token)
    a, b = cat.track_ids[2000:2003], cat.track_ids[2003:2006]
    artist = min(x.id for x in cat.artists)

    def run():
        sp.current_user_saved_tracks_add(a)
        t.saved_tracks_add(b)
        sp.user_follow_artists([artist])
        return (t.saved_tracks_contains(a + b), sp.current_user_saved_tracks_contains(a + b),
                [s.track.id for s in t.saved_tracks(limit=50).items],
                [x["track"]["id"] for x in sp.current_user_saved_tracks(limit=50)["items"]],
                t.artists_is_following([artist]))

    seen_t, seen_s, list_t, list_s, follows = await asyncio.to_thread(run)
    assert seen_t == seen_s == [True] * 6
    assert list_t == list_s == list(reversed(b)) + list(reversed(a))
    assert follows == [True]


async def test_paging_edges(server, cat, http, unique):
    h = auth(server, unique)
    ids = cat.track_ids[3000:3007]
    r = await http.put(f"{server.url}/v1/me/tracks/", json={"ids": ids}, headers=h)      # body form, slash
    assert r.status == 200 and await r.read() == b""
    r = await http.get(f"{server.url}/v1/me/tracks?limit=3&offset=6", headers=h)
    page = await r.json()
    assert page["next"] is None and page["previous"].endswith("offset=3&limit=3") and len(page["items"]) == 1
    r = await http.get(f"{server.url}/v1/me/tracks?offset=50", headers=h)
    page = await r.json()
    assert page["items"] == [] and page["total"] == 7 and page["next"] is None
    for bad in ("limit=0", "limit=51", "offset=-1", "limit=x"):
        r = await http.get(f"{server.url}/v1/me/tracks?{bad}", headers=h)
        assert r.status == 400, bad
    r = await http.get(f"{server.url}/v1/me/following?type=artist", headers=h)
    body = await r.json()
    assert body == {"artists": {"href": f"{server.url}/v1/me/following?type=artist&limit=20", "items": [],
                                "limit": 20, "next": None, "cursors": {"after": None}, "total": 0}}


async def test_cursor_survives_changes_between_pages(server, cat, http, unique):
    h = auth(server, unique)
    artists = sorted(a.id for a in cat.artists)[40:50]
    r = await http.put(f"{server.url}/v1/me/following?type=artist&ids={','.join(artists)}", headers=h)
    assert r.status == 204
    page = (await (await http.get(f"{server.url}/v1/me/following?type=artist&limit=4", headers=h)).json())["artists"]
    assert [a["id"] for a in page["items"]] == artists[:4]
    # the cursor artist itself is unfollowed and an earlier one followed meanwhile
    await http.delete(f"{server.url}/v1/me/following?type=artist&ids={artists[3]}", headers=h)
    await http.put(f"{server.url}/v1/me/following?type=artist&ids={min(a.id for a in cat.artists)}", headers=h)
    nxt = (await (await http.get(page["next"], headers=h)).json())["artists"]
    assert [a["id"] for a in nxt["items"]] == artists[4:8] and nxt["total"] == 10


# -- bad input: 400 in Spotify's shape, nothing changed -------------------------------------------

BAD_LIBRARY = [
    ("PUT", "/v1/me/library", "BAD_REQUEST"),                                          # missing uris
    ("PUT", "/v1/me/library?uris=", "BAD_REQUEST"),
    ("PUT", "/v1/me/library?uris=spotify:track:nope", "INVALID_URI"),
    ("PUT", "/v1/me/library?uris=https://open.spotify.com/track/x", "INVALID_URI"),
    ("PUT", "/v1/me/library?uris=spotify:episode:4rOoJ6Egrf8K2IrywzwOMk", "BAD_REQUEST"),   # unsupported type
    ("PUT", "/v1/me/library?uris=spotify:user:someone", "BAD_REQUEST"),
    ("DELETE", "/v1/me/library?uris=spotify:show:4rOoJ6Egrf8K2IrywzwOMk", "BAD_REQUEST"),
    ("GET", "/v1/me/library/contains", "BAD_REQUEST"),
    ("PUT", "/v1/me/tracks", "BAD_REQUEST"),                                            # missing ids
    ("PUT", "/v1/me/tracks?ids=short", "INVALID_URI"),
    ("GET", "/v1/me/tracks/contains?ids=bad!id", "INVALID_URI"),
    ("PUT", "/v1/me/following?ids=4rOoJ6Egrf8K2IrywzwOMk", "BAD_REQUEST"),              # missing type
    ("PUT", "/v1/me/following?type=user&ids=4rOoJ6Egrf8K2IrywzwOMk", "BAD_REQUEST"),
    ("GET", "/v1/me/following?type=album", "BAD_REQUEST"),
    ("GET", "/v1/me/following?type=artist&after=nope", "INVALID_URI"),
    ("PUT", "/v1/playlists/not-an-id/followers", "INVALID_URI"),
]


@pytest.mark.parametrize("method,path,reason", BAD_LIBRARY)
async def test_bad_requests_are_400_in_spotify_shape(server, http, unique, method, path, reason):
    r = await http.request(method, server.url + path, headers=auth(server, unique))
    body = await r.json()
    assert r.status == 400, body
    assert body["error"]["status"] == 400 and body["error"]["code"] == reason and body["error"]["message"]


async def test_whole_call_refused_and_nothing_changed(server, cat, http, unique):
    h = auth(server, unique)
    good = [f"spotify:track:{t}" for t in cat.track_ids[:3]]
    album = next(a.id for a in cat.albums)
    unknown = f"spotify:track:{random_id()}"
    cases = [
        ("PUT", "/v1/me/library?uris=" + ",".join(good + [unknown]), "UNKNOWN_URI"),
        ("PUT", "/v1/me/library?uris=" + ",".join(good + ["spotify:track:bad"]), "INVALID_URI"),
        ("PUT", "/v1/me/library?uris=" + ",".join([f"spotify:track:{t}" for t in cat.track_ids[:41]]), "BAD_REQUEST"),
        ("PUT", "/v1/me/tracks?ids=" + ",".join(cat.track_ids[:51]), "BAD_REQUEST"),
        ("PUT", f"/v1/me/tracks?ids={cat.track_ids[0]},{album}", "UNKNOWN_URI"),       # an album id as a track
        ("PUT", f"/v1/me/albums?ids={cat.track_ids[0]}", "UNKNOWN_URI"),
        ("PUT", f"/v1/me/following?type=artist&ids={cat.track_ids[0]}", "UNKNOWN_URI"),
        ("DELETE", f"/v1/me/tracks?ids={random_id()}", "UNKNOWN_URI"),                   # absent and unknown
    ]
    for method, path, reason in cases:
        r = await http.request(method, server.url + path, headers=h)
        body = await r.json()
        assert r.status == 400 and body["error"]["code"] == reason, (path, body)
    r = await http.put(f"{server.url}/v1/me/library?uris={unknown}", headers=h)
    assert unknown in (await r.json())["error"]["message"]            # the message names the uri
    totals = (await call(server, "session", unique, "subscribe", {}, unique))["library"]["totals"]
    assert totals == {"track": 0, "album": 0, "artist": 0, "playlist": 0}
    r = await http.get(f"{server.url}/v1/me/tracks/contains?ids={random_id()}", headers=h)
    assert await r.json() == [False]                # contains of an unknown id: false, as Spotify


async def test_clients_raise_their_own_errors_on_bad_input(server, cat, unique):
    token = server.auth.mint(unique)
    sp = spotipy_client(server.url, token)
    with pytest.raises(spotipy.SpotifyException) as e:
        await asyncio.to_thread(sp.current_user_saved_tracks_add, [random_id()])
    assert e.value.http_status == 400 and "unknown" in e.value.msg.lower()
    with pytest.raises(spotipy.SpotifyException) as e:
        await asyncio.to_thread(sp.current_user_saved_tracks_add, cat.track_ids[:41])
    assert e.value.http_status == 400
    assert await asyncio.to_thread(sp.current_user_saved_tracks_contains, cat.track_ids[:41][:2]) == [False, False]


async def test_tekore_raises_bad_request_on_unknown_id(server, unique):
    t = tekore_client(server.url, server.auth.mint(unique))
    with pytest.raises(tk.BadRequest):
        await asyncio.to_thread(t.saved_tracks_add, [random_id()])


# -- idempotency, security -------------------------------------------------------------------------

async def test_idempotency_key_applies_a_mutation_once(server, cat, http, unique):
    h = auth(server, unique)
    tid = cat.track_ids[4000]
    r = await http.put(f"{server.url}/v1/me/tracks?ids={tid}", headers={**h, "Idempotency-Key": f"{unique}-1"})
    assert r.status == 200
    r = await http.delete(f"{server.url}/v1/me/tracks?ids={tid}", headers=h)
    assert r.status == 200
    # a late retry of the first save is answered from the log, not applied again
    r = await http.put(f"{server.url}/v1/me/tracks?ids={tid}", headers={**h, "Idempotency-Key": f"{unique}-1"})
    assert r.status == 200
    assert await library(server, unique, "track") == []
    r = await http.put(f"{server.url}/v1/me/tracks?ids={tid}", headers={**h, "Idempotency-Key": "x" * 129})
    assert r.status == 400


async def test_a_user_reads_and_changes_only_their_own_library(server, cat, http, unique):
    await http.put(f"{server.url}/v1/me/tracks?ids={cat.track_ids[5]}", headers=auth(server, unique))
    other = auth(server, f"{unique}-other")
    r = await http.get(f"{server.url}/v1/me/tracks", headers=other)
    assert (await r.json())["total"] == 0
    r = await http.get(f"{server.url}/v1/me/tracks")
    assert r.status == 401 and (await r.json())["error"]["status"] == 401
    with pytest.raises(SyncopateError) as e:            # not even through the cluster directly
        await call(server, "session", unique, "library_list", {"type": "track"}, f"{unique}-other")
    assert e.value.code == ErrorCode.FORBIDDEN


async def open_ws(http, url: str, token: str, **query) -> aiohttp.ClientWebSocketResponse:
    """Connect, read the hello, then make one round trip to the session: the automatic subscription
    was requested before it, on the same ordered channel, so pushes reach this socket from now on."""
    q = "".join(f"&{k}={v}" for k, v in query.items())
    ws = await http.ws_connect(f"{url}/v1/ws?token={token}{q}")
    assert (await recv(ws))["type"] == "hello"
    await ws.send_str('{"id": "ready", "type": "session.list"}')
    await recv(ws, lambda f: f.get("id") == "ready")
    return ws


async def recv(ws, match=lambda f: True, timeout: float = 5.0) -> dict:
    """The next frame that matches, within a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await asyncio.wait_for(ws.receive(), max(0.01, deadline - time.monotonic()))
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = orjson.loads(msg.data)
        if match(frame):
            return frame


async def test_library_change_over_rest_is_pushed_to_websockets(server, cat, http, unique):
    ws = await open_ws(http, server.url, server.auth.mint(unique))
    album = [a.id for a in cat.albums][7]
    t0 = time.perf_counter()
    r = await http.put(f"{server.url}/v1/me/library?uris=spotify:album:{album}", headers=auth(server, unique))
    assert r.status == 200 and await r.json() == {}
    push = await recv(ws, lambda f: f["type"] == "library.changed")
    assert time.perf_counter() - t0 < 2
    assert push["entity"] == f"session:{unique}"
    assert push["payload"]["changes"] == [{"op": "save", "uri": f"spotify:album:{album}",
                                           "added_at": push["payload"]["changes"][0]["added_at"]}]
    assert push["payload"]["library_version"] == push["version"]
    await ws.close()


# -- sessions over REST ------------------------------------------------------------------------------

async def test_list_and_end_sessions(server, http, unique):
    phone = server.auth.mint(unique, device_id="phone")
    laptop = server.auth.mint(unique, device_id="laptop")
    ws_phone = await open_ws(http, server.url, phone, client="app")
    ws_laptop = await open_ws(http, server.url, laptop, client="speaker")

    async def sessions(token):
        r = await http.get(f"{server.url}/v1/me/sessions", headers={"Authorization": f"Bearer {token}"})
        assert r.status == 200
        return await r.json()

    async def both_listed():
        return len((await sessions(laptop))["sessions"]) == 2
    await eventually(both_listed)
    body = await sessions(laptop)
    mine = {s["device_id"]: s for s in body["sessions"]}
    assert set(mine) == {"phone", "laptop"} and mine["laptop"]["this_device"] and not mine["phone"]["this_device"]
    assert mine["phone"]["gateway"] == "g0" and mine["phone"]["connected_since"] <= mine["phone"]["last_seen"]
    # someone else sees none of them
    assert (await sessions(server.auth.mint(f"{unique}-x")))["sessions"] == []

    r = await http.delete(f"{server.url}/v1/me/sessions/phone", headers={"Authorization": f"Bearer {laptop}"})
    assert r.status == 200 and (await r.json())["closed"] == 1
    # the phone's socket gets session.ended (after the session.changed of its sign-out) and is closed
    while True:
        msg = await asyncio.wait_for(ws_phone.receive(), 5)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        last = orjson.loads(msg.data)
    assert last["type"] == "session.ended" and last["payload"]["by_device"] == "laptop"
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4001
    # its token is refused from then on, over REST and websocket
    r = await http.get(f"{server.url}/v1/me/tracks", headers={"Authorization": f"Bearer {phone}"})
    assert r.status == 401 and (await r.json())["error"]["code"] == "SESSION_ENDED"
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        ws = await http.ws_connect(f"{server.url}/v1/ws?token={phone}")
        await asyncio.wait_for(ws.receive(), 5)
    assert e.value.status == 401
    # a token minted after the sign-out (signing in again on the phone) is accepted
    again = server.auth.mint(unique, device_id="phone", now=time.time() + 2)
    r = await http.get(f"{server.url}/v1/me/tracks", headers={"Authorization": f"Bearer {again}"})
    assert r.status == 200
    assert [s["device_id"] for s in (await sessions(laptop))["sessions"]] == ["laptop"]
    await ws_laptop.close()
