"""The player (Connect) REST surface, driven by unmodified spotipy 2.26 (and tekore 6 for a few calls)
against an in-process server. Devices are real websocket clients that register with `device.register`;
REST then controls them, and every device sees the result as a `player.changed` push.

spotipy and tekore are synchronous: they run in a worker thread (`asyncio.to_thread`) so the event
loop that serves them stays free.
"""
from __future__ import annotations

import asyncio
import time
import warnings

import orjson
import pytest
import spotipy
import tekore as tk

from gateway.auth import Auth, write_secret
from protocols.errors import HTTP_STATUS, ErrorCode
from storage.memory import MemoryStore
from syncopate.server import LocalServer, ServerSpec
from tests.support.player import Device, assert_in_order, new_playlist_id, wait_version
from tests.support.playlists import eventually

SECRET = "player-rest-secret-0123456789-abcdefgh"
@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    spec = ServerSpec(data_dir=str(tmp_path_factory.mktemp("player")), port=0, hosts=1,
                      secret_file=str(write_secret(tmp_path_factory.mktemp("key") / "secret.key", SECRET)),
                      gateway={"rest_rate": 1000, "rest_burst": 1000})
    srv = await LocalServer(spec, store=MemoryStore()).start()
    yield srv
    await srv.stop()


@pytest.fixture(scope="module")
def catalog(server):
    return server.gateway.ctx.catalog


def mint(user: str, **kw) -> str:
    return Auth(SECRET).mint(user, **kw)


def client(server, token: str) -> spotipy.Spotify:
    sp = spotipy.Spotify(auth=token, retries=0, status_retries=0, requests_timeout=20)
    sp.prefix = server.url + "/v1/"
    return sp


async def sp_call(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


async def sp_error(fn, *args, **kw) -> spotipy.SpotifyException:
    with pytest.raises(spotipy.SpotifyException) as e:
        await asyncio.to_thread(fn, *args, **kw)
    return e.value


async def raw(http, server, token, method, path, body=None) -> tuple[int, dict | None]:
    kw = {"data": orjson.dumps(body)} if body is not None else {}
    async with http.request(method, f"{server.url}/v1/{path}", headers={"Authorization": f"Bearer {token}"},
                            **kw) as r:
        data = await r.read()
        return r.status, (orjson.loads(data) if data else None)


class User:
    """A user with a spotipy client and some registered websocket devices."""

    def __init__(self, server, http, name: str, product: str = "premium") -> None:
        self.server, self.http, self.name = server, http, name
        self.token = mint(name, product=product)
        self.sp = client(server, self.token)
        self.devices: dict[str, Device] = {}

    async def device(self, did: str, **reg) -> Device:
        reg.setdefault("name", did.title())
        reg.setdefault("type", "computer")
        d = await Device(self.http, self.server.url, self.token, did, **reg).connect()
        await d.register()
        self.devices[did] = d
        return d

    async def settled(self) -> int:
        """Wait until every device holds the same newest revision; returns it."""
        rev = max(d.revision for d in self.devices.values())
        for d in self.devices.values():
            if d.revision < rev:
                await d.wait_revision(rev)
        return rev

    async def raw(self, method, path, body=None):
        return await raw(self.http, self.server, self.token, method, path, body)

    async def close(self) -> None:
        for d in self.devices.values():
            await d.close()


@pytest.fixture
async def user(server, http, unique):
    u = User(server, http, unique)
    yield u
    await u.close()


def album_with(catalog, n: int):
    for a in catalog.albums:
        if len(a.track_ids) >= n:
            return a
    raise AssertionError(f"no album with {n} tracks")


def track_uris(catalog, n: int, *, min_ms: int = 60_000) -> list[str]:
    out = [t.uri for t in catalog.tracks if t.duration_ms >= min_ms][:n]
    assert len(out) == n
    return out


# == tests =======================================================================================

async def test_devices_transfer_and_playback_state(user):
    sp = user.sp
    lap = await user.device("laptop", volume_percent=60)
    ph = await user.device("phone", type="smartphone")
    devs = (await sp_call(sp.devices))["devices"]
    assert [d["id"] for d in devs] == ["laptop", "phone"]
    assert devs[0] == {"id": "laptop", "is_active": False, "is_private_session": False, "is_restricted": False,
                       "name": "Laptop", "type": "Computer", "volume_percent": 60, "supports_volume": True}
    assert await sp_call(sp.current_playback) is None          # 204: nothing active
    assert await sp_call(sp.currently_playing) is None

    await sp_call(sp.transfer_playback, "laptop", force_play=False)
    st = await sp_call(sp.current_playback)
    assert st["device"]["id"] == "laptop" and st["device"]["is_active"] and st["item"] is None
    assert "is_online" not in st["device"]
    assert await sp_call(sp.currently_playing) is None          # active, but nothing loaded

    await sp_call(sp.start_playback, uris=track_uris(sp_catalog(user), 3))
    await lap.wait_for(lambda c: c["player"]["is_playing"])
    rev = await user.settled()
    for d in (lap, ph):
        c = d.latest
        assert c["revision"] == rev and c["active_device_id"] == "laptop" and c["player"]["is_playing"]
    st = await sp_call(sp.current_playback)
    assert st["is_playing"] and st["item"]["uri"] == lap.latest["player"]["track"]["uri"]
    assert st["item"]["href"].startswith(user.server.url)        # hrefs point at this server
    assert st["context"] is None and st["repeat_state"] == "off" and st["shuffle_state"] is False

    await sp_call(sp.transfer_playback, "phone", force_play=True)
    c = await ph.wait_for(lambda c: c["active_device_id"] == "phone")
    assert c["player"]["is_playing"] and c["player"]["position_as_of_timestamp"] >= 0
    assert (await sp_call(sp.current_playback))["device"]["id"] == "phone"
    await user.settled()
    assert_in_order(lap)
    assert_in_order(ph)

    for body, reason in [({"device_ids": ["laptop", "phone"]}, "BAD_REQUEST"), ({"device_ids": []}, "BAD_REQUEST"),
                         ({"device_ids": "laptop"}, "BAD_REQUEST"), ({"device_ids": ["nope"]}, "NOT_FOUND"),
                         ({"device_ids": ["laptop"], "play": "maybe"}, "INVALID_FIELD")]:
        status, err = await user.raw("PUT", "me/player", body)
        assert err["error"]["code"] == reason and status == (404 if reason == "NOT_FOUND" else 400), (body, err)
    status, err = await user.raw("PUT", "me/player")        # no body at all
    assert status == 400
    assert (await sp_call(sp.current_playback))["device"]["id"] == "phone"


def sp_catalog(user):
    return user.server.gateway.ctx.catalog


async def test_play_uris_with_offset_and_position(user, catalog):
    sp = user.sp
    lap = await user.device("laptop")
    uris = track_uris(catalog, 3)
    await sp_call(sp.start_playback, device_id="laptop", uris=uris, offset={"position": 1}, position_ms=5000)
    cur = await sp_call(sp.currently_playing)
    assert cur["item"]["uri"] == uris[1] and cur["is_playing"] and cur["progress_ms"] >= 5000
    assert cur["context"] is None
    await sp_call(sp.start_playback, uris=uris, offset={"uri": uris[2]})
    assert (await sp_call(sp.currently_playing))["item"]["uri"] == uris[2]
    dur0 = catalog.track_by_uri(uris[0]).duration_ms
    await sp_call(sp.start_playback, uris=uris, position_ms=dur0 + 1)   # past the end: the next track
    cur = await sp_call(sp.currently_playing)
    assert cur["item"]["uri"] == uris[1] and cur["progress_ms"] < 10_000
    c = await lap.wait_for(lambda c: c["player"]["track"] and c["player"]["track"]["uri"] == uris[1])
    assert c["next_tracks"] == [uris[2]]
    # bad input: nothing changes
    before = lap.revision
    for body, reason in [({"uris": ["spotify:track:nope"]}, "INVALID_URI"),
                         ({"uris": ["spotify:track:" + "0" * 22]}, "UNKNOWN_URI"),
                         ({"uris": uris, "offset": {"position": 3}}, "BAD_REQUEST"),
                         ({"uris": uris, "position_ms": -1}, "BAD_REQUEST"),
                         ({"uris": uris, "position_ms": "soon"}, "INVALID_FIELD"),
                         ({"uris": uris, "context_uri": "spotify:album:" + "0" * 22}, "BAD_REQUEST"),
                         ({"context_uri": uris[0]}, "INVALID_URI"),
                         ({"context_uri": "spotify:artist:" + "0" * 22}, "CONTEXT_DISALLOW")]:
        status, err = await user.raw("PUT", "me/player/play", body)
        # the status is the code's (protocols/errors.py HTTP_STATUS): 403 for CONTEXT_DISALLOW, else 400
        assert err["error"]["code"] == reason and status == HTTP_STATUS[ErrorCode(reason)], (body, err)
    assert (await sp_call(sp.currently_playing))["item"]["uri"] == uris[1]
    await sp_call(sp.volume, 30)           # a barrier: the next push is the next revision
    c = await lap.wait_for(lambda c: c["reason"] == "volume_changed")
    assert c["revision"] == before + 1 and lap.pushes[-1] is c


async def test_album_context_next_previous_and_queue(user, catalog):
    sp = user.sp
    await user.device("laptop")
    album = album_with(catalog, 3)
    tracks = [catalog.track(t).uri for t in album.track_ids]
    await sp_call(sp.start_playback, device_id="laptop", context_uri=album.uri, offset={"position": 1})
    st = await sp_call(sp.current_playback)
    assert st["context"]["uri"] == album.uri and st["context"]["type"] == "album"
    assert st["context"]["href"] == f"{user.server.url}/v1/albums/{album.id}"
    assert st["item"]["uri"] == tracks[1]
    q = await sp_call(sp.queue)
    assert q["currently_playing"]["uri"] == tracks[1]
    assert [t["uri"] for t in q["queue"]][: len(tracks) - 2] == tracks[2:]
    await sp_call(sp.next_track)
    assert (await sp_call(sp.currently_playing))["item"]["uri"] == tracks[2]
    await sp_call(sp.previous_track)
    await sp_call(sp.previous_track)
    assert (await sp_call(sp.currently_playing))["item"]["uri"] == tracks[0]
    e = await sp_error(sp.previous_track)
    assert e.http_status == 403 and e.reason == "NO_PREV_TRACK"
    # the user queue plays before the context
    extra = track_uris(catalog, 1)[0]
    await sp_call(sp.add_to_queue, extra)
    q = await sp_call(sp.queue)
    assert q["queue"][0]["uri"] == extra and q["queue"][1]["uri"] == tracks[1]
    await sp_call(sp.next_track)
    assert (await sp_call(sp.currently_playing))["item"]["uri"] == extra
    await sp_call(sp.next_track)
    assert (await sp_call(sp.currently_playing))["item"]["uri"] == tracks[1]
    # queue errors
    for uri, reason in [("spotify:track:bad", "INVALID_URI"), ("spotify:track:" + "1" * 22, "UNKNOWN_URI"),
                        (album.uri, "INVALID_URI")]:
        status, err = await user.raw("POST", f"me/player/queue?uri={uri}")
        assert status == 400 and err["error"]["code"] == reason, (uri, err)
    status, err = await user.raw("POST", "me/player/queue")
    assert status == 400 and err["error"]["code"] == "INVALID_FIELD"
    assert (await sp_call(sp.queue))["queue"][0]["uri"] == tracks[2]


async def test_next_at_the_end_and_repeat(user, catalog):
    sp = user.sp
    await user.device("laptop")
    uris = track_uris(catalog, 2)
    await sp_call(sp.start_playback, device_id="laptop", uris=uris, offset={"position": 1})
    e = await sp_error(sp.next_track)
    assert e.http_status == 403 and e.reason == "NO_NEXT_TRACK"
    await sp_call(sp.repeat, "context")
    st = await sp_call(sp.current_playback)
    assert st["repeat_state"] == "context" and "skipping_next" not in st["actions"]["disallows"]
    await sp_call(sp.next_track)                                   # wraps with repeat context
    assert (await sp_call(sp.currently_playing))["item"]["uri"] == uris[0]
    await sp_call(sp.repeat, "track")
    assert (await sp_call(sp.current_playback))["repeat_state"] == "track"
    for q, reason in [("state=sometimes", "BAD_REQUEST"), ("", "INVALID_FIELD")]:
        status, err = await user.raw("PUT", f"me/player/repeat?{q}")
        assert status == 400 and err["error"]["code"] == reason
    assert (await sp_call(sp.current_playback))["repeat_state"] == "track"
    await sp_call(sp.shuffle, True)
    assert (await sp_call(sp.current_playback))["shuffle_state"] is True
    status, err = await user.raw("PUT", "me/player/shuffle?state=yes")
    assert status == 400 and err["error"]["code"] == "INVALID_FIELD"
    await sp_call(sp.shuffle, False)
    assert (await sp_call(sp.current_playback))["shuffle_state"] is False


async def test_pause_resume_and_their_errors(user, catalog):
    sp = user.sp
    lap = await user.device("laptop")
    e = await sp_error(sp.pause_playback)
    assert e.http_status == 404 and e.reason == "NO_ACTIVE_DEVICE"
    e = await sp_error(sp.start_playback)                     # resume with nothing active
    assert e.http_status == 404 and e.reason == "NO_ACTIVE_DEVICE"
    e = await sp_error(sp.start_playback, device_id="laptop")   # resume with nothing loaded
    assert e.http_status == 403 and e.reason == "NO_SPECIFIC_TRACK"
    await sp_call(sp.start_playback, device_id="laptop", uris=track_uris(catalog, 2), position_ms=20_000)
    await sp_call(sp.pause_playback)
    c = await lap.wait_for(lambda c: not c["player"]["is_playing"] and c["player"]["track"] is not None)
    assert c["player"]["playback_speed"] == 0.0 and c["player"]["position_as_of_timestamp"] >= 20_000
    st = await sp_call(sp.current_playback)
    assert not st["is_playing"] and st["actions"]["disallows"].get("pausing") is True
    e = await sp_error(sp.pause_playback)
    assert e.http_status == 403 and e.reason == "ALREADY_PAUSED"
    assert await sp_call(sp.current_playback) == st              # refused: nothing changed
    await sp_call(sp.start_playback)                            # no body: resume
    st2 = await sp_call(sp.current_playback)
    assert st2["is_playing"] and st2["progress_ms"] >= st["progress_ms"]
    e = await sp_error(sp.start_playback)
    assert e.http_status == 403 and e.reason == "NOT_PAUSED"


async def test_seek(user, catalog):
    sp = user.sp
    await user.device("laptop")
    uris = track_uris(catalog, 3)
    await sp_call(sp.start_playback, device_id="laptop", uris=uris)
    await sp_call(sp.pause_playback)
    await sp_call(sp.seek_track, 30_000)
    st = await sp_call(sp.current_playback)
    assert st["progress_ms"] == 30_000 and not st["is_playing"]
    for q, reason in [("position_ms=abc", "INVALID_FIELD"), ("position_ms=1.5", "INVALID_FIELD"),
                      ("", "INVALID_FIELD"), ("position_ms=-1", "BAD_REQUEST")]:
        status, err = await user.raw("PUT", f"me/player/seek?{q}")
        assert status == 400 and err["error"]["code"] == reason, (q, err)
    assert await sp_call(sp.current_playback) == st               # bad input: state unchanged
    dur = catalog.track_by_uri(uris[0]).duration_ms
    await sp_call(sp.seek_track, dur + 5)                         # past the end: the next track
    st = await sp_call(sp.current_playback)
    assert st["item"]["uri"] == uris[1] and st["progress_ms"] == 0


async def test_volume(user, catalog):
    sp = user.sp
    lap = await user.device("laptop", volume_percent=50)
    await user.device("speaker", type="speaker", supports_volume=False)
    await sp_call(sp.start_playback, device_id="laptop", uris=track_uris(catalog, 1))
    await sp_call(sp.volume, 35)
    c = await lap.wait_for(lambda c: c["reason"] == "volume_changed")
    assert c["player"]["volume_percent"] == 35
    assert (await sp_call(sp.current_playback))["device"]["volume_percent"] == 35
    before = await sp_call(sp.devices)
    for q, status, reason in [("volume_percent=101", 400, "BAD_REQUEST"), ("volume_percent=-1", 400, "BAD_REQUEST"),
                              ("volume_percent=loud", 400, "INVALID_FIELD"), ("", 400, "INVALID_FIELD"),
                              ("volume_percent=10&device_id=speaker", 403, "VOLUME_CONTROL_DISALLOW"),
                              ("volume_percent=10&device_id=ghost", 404, "NOT_FOUND")]:
        s, err = await user.raw("PUT", f"me/player/volume?{q}")
        assert s == status and err["error"]["code"] == reason, (q, err)
    e = await sp_error(sp.volume, 20, device_id="speaker")
    assert e.http_status == 403 and e.reason == "VOLUME_CONTROL_DISALLOW"
    assert await sp_call(sp.devices) == before
    await sp_call(sp.volume, 80, device_id="laptop")
    assert [d["volume_percent"] for d in (await sp_call(sp.devices))["devices"]] == [80, 100]


async def test_recently_played_and_stream_counts(user, catalog):
    sp = user.sp
    lap = await user.device("laptop")
    uris = track_uris(catalog, 3)
    await sp_call(sp.start_playback, device_id="laptop", uris=uris)
    assert (await sp_call(sp.current_user_recently_played))["items"] == []
    pid = (await lap.wait_for(lambda c: c["player"]["is_playing"]))["player"]["playback_id"]
    short = await lap.call("device.progress", {"event_id": "e0", "device_id": "laptop", "uri": uris[0],
                                               "ms_played": 12_000, "playback_id": pid})
    assert short == {"counted": False, "duplicate": False, "stream_count": 0}
    assert (await sp_call(sp.current_user_recently_played))["items"] == []
    t0 = int(time.time() * 1000)
    r = await lap.call("device.progress", {"event_id": "e1", "device_id": "laptop", "uri": uris[0],
                                           "ms_played": 30_000, "playback_id": pid})
    assert r["counted"] and r["stream_count"] == 1
    again = await lap.call("device.progress", {"event_id": "e1", "device_id": "laptop", "uri": uris[0],
                                               "ms_played": 30_000, "playback_id": pid})
    assert again["duplicate"] and again["stream_count"] == 1
    await sp_call(sp.next_track)
    pid2 = (await lap.wait_for(lambda c: c["player"]["track"]["uri"] == uris[1]))["player"]["playback_id"]
    await lap.call("device.progress", {"event_id": "e2", "device_id": "laptop", "uri": uris[1],
                                       "ms_played": 45_000, "playback_id": pid2})
    # recently played reads the event pipeline's record: the consumer applies the plays shortly after
    async def both():
        page = await sp_call(sp.current_user_recently_played, limit=10)
        return page if len(page["items"]) >= 2 else None
    rp = await eventually(both, what="the two plays in recently played")
    assert [i["track"]["uri"] for i in rp["items"]] == [uris[1], uris[0]]     # newest first
    assert rp["items"][0]["played_at"].endswith("Z") and rp["items"][0]["context"] is None
    assert int(rp["cursors"]["before"]) >= t0 - 5_000
    one = await sp_call(sp.current_user_recently_played, limit=1)
    assert [i["track"]["uri"] for i in one["items"]] == [uris[1]]
    assert one["next"].startswith(user.server.url + "/v1/me/player/recently-played?before=")
    older = await sp_call(sp.next, one)                          # spotipy follows `next` to this server
    assert [i["track"]["uri"] for i in older["items"]] == [uris[0]]
    after = await sp_call(sp.current_user_recently_played, after=int(one["cursors"]["before"]) - 1)
    assert uris[1] in [i["track"]["uri"] for i in after["items"]]
    for q, reason in [("limit=51", "BAD_REQUEST"), ("limit=0", "BAD_REQUEST"), ("limit=x", "INVALID_FIELD"),
                      ("after=1&before=2", "BAD_REQUEST")]:
        s, err = await user.raw("GET", f"me/player/recently-played?{q}")
        assert s == 400 and err["error"]["code"] == reason, (q, err)
    # the operator query
    s, counts = await user.raw("GET", f"me/player/stream-counts?uris={uris[0]},{uris[1]},{uris[2]}")
    assert s == 200 and counts == {"user_id": user.name, "counts": {uris[0]: 1, uris[1]: 1, uris[2]: 0}, "total": 2}
    s, counts = await user.raw("GET", "me/player/stream-counts")
    assert counts["counts"] == {uris[0]: 1, uris[1]: 1}
    s, err = await user.raw("GET", "me/player/stream-counts?uris=spotify:album:" + "0" * 22)
    assert s == 400 and err["error"]["code"] == "INVALID_URI"


async def test_free_tier_reads_but_does_not_control(server, http, unique, catalog):
    u = User(server, http, unique, product="free")
    try:
        await u.device("phone", type="smartphone")
        assert [d["id"] for d in (await sp_call(u.sp.devices))["devices"]] == ["phone"]
        calls = [(u.sp.start_playback, ("phone", None, track_uris(catalog, 1))), (u.sp.transfer_playback, ("phone",)),
                 (u.sp.pause_playback, ()), (u.sp.next_track, ()), (u.sp.previous_track, ()),
                 (u.sp.seek_track, (100,)), (u.sp.repeat, ("track",)), (u.sp.shuffle, (True,)),
                 (u.sp.volume, (10,)), (u.sp.add_to_queue, (track_uris(catalog, 1)[0],))]
        for fn, args in calls:
            e = await sp_error(fn, *args)
            assert e.http_status == 403 and e.reason == "PREMIUM_REQUIRED", fn.__name__
        assert await sp_call(u.sp.current_playback) is None
        assert (await sp_call(u.sp.queue))["currently_playing"] is None
        assert (await sp_call(u.sp.current_user_recently_played))["items"] == []
    finally:
        await u.close()


async def test_another_users_device_is_not_found(server, http, unique, user, catalog):
    await user.device("laptop")
    await sp_call(user.sp.start_playback, device_id="laptop", uris=track_uris(catalog, 1))
    rev = (await user.devices["laptop"].wait_for(lambda c: c["player"]["is_playing"]))["revision"]
    other = User(server, http, unique + "-b")
    try:
        await other.device("mine")
        e = await sp_error(other.sp.start_playback, device_id="laptop", uris=track_uris(catalog, 1))
        assert e.http_status == 404 and e.reason is None
        e = await sp_error(other.sp.transfer_playback, "laptop")
        assert e.http_status == 404 and e.reason is None
        e = await sp_error(other.sp.volume, 5, device_id="laptop")
        assert e.http_status == 404
        assert [d["id"] for d in (await sp_call(other.sp.devices))["devices"]] == ["mine"]
        assert await sp_call(other.sp.current_playback) is None
    finally:
        await other.close()
    assert (await sp_call(user.sp.current_playback))["device"]["id"] == "laptop"
    await sp_call(user.sp.volume, 30)      # a barrier: no push happened in between
    c = await user.devices["laptop"].wait_for(lambda c: c["reason"] == "volume_changed")
    assert c["revision"] == rev + 1
    # another user's websocket can't subscribe to this user's device group
    dev = await Device(http, server.url, mint(unique + "-c")).connect()
    f = await dev.request("subscribe", {"entity": f"devicegroup:{user.name}"})
    assert f["type"] == "error" and f["error"]["code"] == "FORBIDDEN"
    await dev.close()


async def test_transfer_to_offline_device_and_bad_device_ids(user, catalog):
    sp = user.sp
    lap = await user.device("laptop")
    ph = await user.device("phone")
    await sp_call(sp.start_playback, device_id="laptop", uris=track_uris(catalog, 2))
    await ph.close()                                               # the phone goes offline
    await lap.wait_for(lambda c: any(d["id"] == "phone" and not d["is_online"] for d in c["devices"]))
    before = await sp_call(sp.current_playback)
    status, err = await user.raw("PUT", "me/player", {"device_ids": ["phone"], "play": True})
    assert status == 400 and err["error"]["code"] == "BAD_REQUEST" and err["error"]["device_id"] == "phone"
    status, err = await user.raw("PUT", "me/player/play?device_id=phone")
    assert status == 400
    status, err = await user.raw("PUT", "me/player/pause?device_id=" + "x" * 200)
    assert status == 400 and err["error"]["code"] == "INVALID_FIELD"
    after = await sp_call(sp.current_playback)
    assert after["device"]["id"] == "laptop" and after["item"] == before["item"] and after["is_playing"]
    assert [d["id"] for d in (await sp_call(sp.devices))["devices"]] == ["laptop"]   # online only


async def test_commands_need_the_active_device_and_restricted_devices(user, catalog):
    sp = user.sp
    await user.device("laptop")
    tv = await user.device("tv", type="tv", is_restricted=True)
    await sp_call(sp.start_playback, device_id="laptop", uris=track_uris(catalog, 2))
    e = await sp_error(sp.pause_playback, device_id="tv")       # not the active device
    assert e.http_status == 404 and e.reason == "NO_ACTIVE_DEVICE"
    e = await sp_error(sp.transfer_playback, "tv")
    assert e.http_status == 403 and e.reason == "DEVICE_NOT_CONTROLLABLE"
    # the restricted device itself may take over (from its own websocket)
    await tv.call("player.transfer", {"device_ids": ["tv"], "play": True, "revision": tv.revision})
    assert (await sp_call(sp.current_playback))["device"]["id"] == "tv"
    e = await sp_error(sp.pause_playback)
    assert e.http_status == 403 and e.reason == "DEVICE_NOT_CONTROLLABLE"
    await sp_call(sp.transfer_playback, "laptop")              # transferring away is allowed
    assert (await sp_call(sp.current_playback))["device"]["id"] == "laptop"


async def test_playlist_context(user, catalog):
    sp = user.sp
    lap = await user.device("laptop")
    pid = new_playlist_id()
    uris = track_uris(catalog, 4)
    await lap.call("playlist.create", {"id": pid, "name": "Road trip"})
    await lap.call("playlist.add", {"id": pid, "uris": uris[:3]})
    v0 = (await lap.call("playlist.get", {"id": pid}))["version"]
    await sp_call(sp.start_playback, device_id="laptop", context_uri=f"spotify:playlist:{pid}",
                  offset={"uri": uris[1]})
    await wait_version(lap, pid, v0 + 1)       # the group listens to the playlist (add_listener)
    st = await sp_call(sp.current_playback)
    assert st["context"]["uri"] == f"spotify:playlist:{pid}" and st["context"]["type"] == "playlist"
    assert st["item"]["uri"] == uris[1]
    # a track inserted before the current one does not move playback
    await lap.call("playlist.add", {"id": pid, "uris": [uris[3]], "position": 0})
    c = await lap.wait_for(lambda c: c["player"]["context"] and c["player"]["context"]["index"] == 2)
    assert c["player"]["track"]["uri"] == uris[1]
    await sp_call(sp.next_track)
    assert (await sp_call(sp.currently_playing))["item"]["uri"] == uris[2]
    e = await sp_error(sp.start_playback, context_uri="spotify:playlist:" + new_playlist_id())
    assert e.http_status == 404


async def test_idempotency_key_applies_a_command_once(user, catalog):
    await user.device("laptop")
    await sp_call(user.sp.start_playback, device_id="laptop", uris=track_uris(catalog, 3))
    h = {"Authorization": f"Bearer {user.token}", "Idempotency-Key": "next-1"}
    for _ in range(2):
        async with user.http.post(f"{user.server.url}/v1/me/player/next", headers=h) as r:
            assert r.status == 204
    q = await sp_call(user.sp.queue)
    assert q["currently_playing"]["uri"] == track_uris(catalog, 3)[1]   # moved once, not twice


async def test_tekore_reads_and_controls(user, catalog, monkeypatch):
    monkeypatch.setattr("tekore._client.base.prefix", user.server.url + "/v1/")
    await user.device("laptop")
    await user.device("car", type="car")
    spotify = await asyncio.to_thread(tk.Spotify, user.token)     # builds an httpx client: file I/O
    uris = track_uris(catalog, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # tekore warns on attributes its models don't know
        devs = await asyncio.to_thread(spotify.playback_devices)
        assert [(d.id, d.type) for d in devs] == [("laptop", tk.model.DeviceType.Computer),
                                                  ("car", tk.model.DeviceType.Automobile)]
        await asyncio.to_thread(spotify.playback_start_tracks, [u.split(":")[-1] for u in uris], device_id="laptop")
        await asyncio.to_thread(spotify.playback_queue_add, uris[0])
        pb = await asyncio.to_thread(spotify.playback)
        assert pb.device.id == "laptop" and pb.is_playing and pb.item.uri == uris[0]
        await asyncio.to_thread(spotify.playback_pause)
        cur = await asyncio.to_thread(spotify.playback_currently_playing)
        assert cur.is_playing is False and cur.item.uri == uris[0]
        q = await asyncio.to_thread(spotify.playback_queue)
        assert q.queue[0].uri == uris[0]
        with pytest.raises(tk.Forbidden):
            await asyncio.to_thread(spotify.playback_pause)    # ALREADY_PAUSED (403)
