"""Explicit content (docs/rights.md "Explicit content"): a user whose account has Spotify's
`explicit_content.filter_enabled` sees explicit tracks `is_playable: false` with `restrictions:
{reason: "explicit"}` (with a market), has a play of one refused with TRACK_UNAVAILABLE
(`restriction: "explicit"`), and has them skipped in contexts; a user without the filter plays them.
The filter reaches the device group from the account (docs/rights.md "The account facts a device
group holds"), not from the gateway: turned on while a group plays, it moves off the explicit track."""
from __future__ import annotations

import orjson
import pytest

from gateway.auth import Auth
from tests.support.catalog import CatalogBuilder, tid, turi
from tests.support.player import Device, WsError
from tests.support.servers import catalog_server

SECRET = "rights-explicit-secret-0123456789-abcdef"
ARTIST, ALBUM, DIRTY = "r" + "0" * 21, "a" + "0" * 21, "a" + "1" * 21
EXPLICIT = {1, 3}                       # tracks 1 and 3 of ALBUM; DIRTY's one track too
FILTERED = {"filter_enabled": True, "filter_locked": True}


def _catalog():
    b = CatalogBuilder()
    b.artist(ARTIST, "Artist")
    b.album(ALBUM, [ARTIST], "Album")
    for i in range(4):
        b.track(tid(i), ALBUM, name=f"Song {i}", duration_ms=200_000, explicit=i in EXPLICIT)
    b.album(DIRTY, [ARTIST], "Only explicit")
    b.track(tid(9), DIRTY, explicit=True)
    return b.build()


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    async with catalog_server(tmp_path_factory, "explicit", _catalog(), SECRET) as srv:
        yield srv


async def call(http, server, token, method, path, body=None):
    kw = {} if body is None else {"data": orjson.dumps(body)}
    async with http.request(method, f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"}, **kw) as r:
        data = await r.read()
        return r.status, (orjson.loads(data) if data else None)


async def add_user(http, server, uid, **fields):
    st, body = await call(http, server, server.auth.mint_operator(), "POST", "/admin/users", {"id": uid, **fields})
    assert st == 201, body
    return body


async def test_me_shows_the_filter_and_a_bad_one_is_refused(server, http, unique):
    await add_user(http, server, unique, explicit_content=FILTERED)
    await add_user(http, server, unique + "b")
    st, me = await call(http, server, Auth(SECRET).mint(unique), "GET", "/v1/me")
    assert st == 200 and me["explicit_content"] == FILTERED
    st, me = await call(http, server, Auth(SECRET).mint(unique + "b"), "GET", "/v1/me")
    assert me["explicit_content"] == {"filter_enabled": False, "filter_locked": False}
    op = server.auth.mint_operator()
    for bad in ({"filter_enabled": "yes", "filter_locked": False}, {"filter_enabled": True}, True,
                {"filter_enabled": True, "filter_locked": False, "x": 1}):
        st, err = await call(http, server, op, "PATCH", f"/admin/users/{unique}b", {"explicit_content": bad})
        assert st == 400 and err["error"]["code"] == "INVALID_FIELD", (bad, st, err)
    st, me = await call(http, server, Auth(SECRET).mint(unique + "b"), "GET", "/v1/me")
    assert me["explicit_content"] == {"filter_enabled": False, "filter_locked": False}      # unchanged


async def test_catalog_objects_say_explicit_for_a_filtered_user(server, http, unique):
    await add_user(http, server, unique, explicit_content=FILTERED)
    tok, free = Auth(SECRET).mint(unique), Auth(SECRET).mint(unique + "x")      # the other has no account
    st, t = await call(http, server, tok, "GET", f"/v1/tracks/{tid(1)}")
    assert st == 200 and t["explicit"] is True and "is_playable" not in t       # no market: no verdict
    for market in ("from_token", "US"):
        st, t = await call(http, server, tok, "GET", f"/v1/tracks/{tid(1)}?market={market}")
        assert t["is_playable"] is False and t["restrictions"] == {"reason": "explicit"}, market
        st, t = await call(http, server, free, "GET", f"/v1/tracks/{tid(1)}?market={market}")
        assert t["is_playable"] is True and "restrictions" not in t
    st, t = await call(http, server, tok, "GET", f"/v1/tracks/{tid(0)}?market=from_token")
    assert t["is_playable"] is True
    st, page = await call(http, server, tok, "GET", f"/v1/albums/{ALBUM}/tracks?market=from_token")
    assert [x["is_playable"] for x in page["items"]] == [True, False, True, False]
    st, albums = await call(http, server, tok, "GET", f"/v1/albums?ids={ALBUM},{DIRTY}&market=from_token")
    assert [a["is_playable"] for a in albums["albums"]] == [True, False]
    # an app's token has no listener: no filter
    st, t = await call(http, server, Auth(SECRET).mint_app("c" * 20), "GET", f"/v1/tracks/{tid(1)}?market=US")
    assert t["is_playable"] is True


async def test_a_filtered_user_cannot_play_explicit_tracks_and_contexts_skip_them(server, http, unique):
    await add_user(http, server, unique, explicit_content=FILTERED)
    tok = Auth(SECRET).mint(unique)
    dev = await Device(http, server.url, tok, "d0", name="Laptop", type="computer").connect()
    try:
        await dev.register()
        st, body = await call(http, server, tok, "PUT", "/v1/me/player/play?device_id=d0", {"uris": [turi(1)]})
        assert st == 403 and body["error"]["code"] == "TRACK_UNAVAILABLE", body
        assert body["error"]["restriction"] == "explicit" and "explicit content filter" in body["error"]["message"]
        with pytest.raises(WsError) as ei:
            await dev.call("player.play", {"device_id": "d0", "uris": [turi(3)]})
        assert ei.value.code == "TRACK_UNAVAILABLE" and ei.value.error["details"]["restriction"] == "explicit"
        # a client can't switch the filter off for itself: the device group plays by the account's
        for refused in ({"uris": [turi(1)], "explicit_filter": False}, {"context_uri": f"spotify:album:{DIRTY}"}):
            with pytest.raises(WsError) as ei:
                await dev.call("player.play", {"device_id": "d0", **refused})
            assert ei.value.error["details"]["restriction"] == "explicit", refused
        # the album plays its clean tracks only
        await dev.call("player.play", {"device_id": "d0", "context_uri": f"spotify:album:{ALBUM}"})
        c = await dev.wait_state(lambda c: c["player"]["track"] and c["player"]["track"]["uri"] == turi(0))
        assert c["next_tracks"] == [turi(2)] and c["player"]["explicit_filter"] is True
        st, q = await call(http, server, tok, "GET", "/v1/me/player/queue?market=from_token")
        assert [t["uri"] for t in q["queue"]] == [turi(2)]
        with pytest.raises(WsError) as ei:
            await dev.call("player.queue_add", {"uri": turi(1)})
        assert ei.value.error["details"]["restriction"] == "explicit"
        await dev.call("player.next", {})
        c = await dev.wait_state(lambda c: c["player"]["track"]["uri"] != turi(0))
        assert c["player"]["track"]["uri"] == turi(2)
    finally:
        await dev.close()


async def test_without_the_filter_explicit_tracks_play(server, http, unique):
    await add_user(http, server, unique)
    tok = Auth(SECRET).mint(unique)
    dev = await Device(http, server.url, tok, "d0", name="Laptop", type="computer").connect()
    try:
        await dev.register()
        await dev.call("player.play", {"device_id": "d0", "context_uri": f"spotify:album:{ALBUM}"})
        c = await dev.wait_state(lambda c: c["player"]["track"] and c["player"]["track"]["uri"] == turi(0))
        assert c["next_tracks"] == [turi(1), turi(2)] and c["player"]["explicit_filter"] is False
        await dev.call("player.next", {})
        c = await dev.wait_state(lambda c: c["player"]["track"]["uri"] != turi(0))
        assert c["player"]["track"]["uri"] == turi(1) and c["player"]["track"]["is_playable"] is True
    finally:
        await dev.close()


async def test_the_filter_turned_on_while_playing_moves_off_the_explicit_track(server, http, unique):
    await add_user(http, server, unique)
    tok = Auth(SECRET).mint(unique)
    dev = await Device(http, server.url, tok, "d0", name="Laptop", type="computer").connect()
    try:
        await dev.register()
        await dev.call("player.play", {"device_id": "d0", "context_uri": f"spotify:album:{ALBUM}",
                                       "offset": {"position": 1}})
        await dev.wait_state(lambda c: c["player"]["track"] and c["player"]["track"]["uri"] == turi(1))
        # the gateway's cache is not what the group plays by: warm it with the filter off
        st, t = await call(http, server, tok, "GET", f"/v1/tracks/{tid(1)}?market=from_token")
        assert t["is_playable"] is True
        st, body = await call(http, server, server.auth.mint_operator(), "PATCH", f"/admin/users/{unique}",
                              {"explicit_content": FILTERED})
        assert st == 200 and body["explicit_content"] == FILTERED
        push = await dev.wait_for(lambda c: c["reason"] == "track_unavailable")
        assert push["unavailable"] == {"uri": turi(1), "reason": "explicit", "market": "US"}
        assert push["player"]["track"]["uri"] == turi(2) and push["player"]["explicit_filter"] is True
        assert push["next_tracks"] == []                   # 3 is explicit too, and repeat is off
    finally:
        await dev.close()


async def test_the_edge_refuses_an_explicit_track_to_a_filtered_user(server, http, unique):
    """The edge checks a fetch by the gateway's cached account facts (docs/rights.md): a signed URL of
    an explicit track opens nothing for a user whose filter is on."""
    import time

    from gateway.stream_sign import StreamClaim
    await add_user(http, server, unique, explicit_content=FILTERED)
    await add_user(http, server, unique + "c")
    signer = server.gateway.ctx.signer
    for user, track, want in ((unique, tid(1), 403), (unique, tid(0), 206), (unique + "c", tid(1), 206)):
        url = signer.url(StreamClaim(user, "d0", track, 160, int(time.time()) + 60))
        tok = Auth(SECRET).mint(user, device_id="d0")
        async with http.get(server.url + url, headers={"Authorization": f"Bearer {tok}", "Range": "bytes=0-15"}) as r:
            body = await r.read()
        assert r.status == want, (user, track, r.status)
        if want == 403:
            assert orjson.loads(body)["error"]["why"] == "unavailable"
