"""Markets over the wire (docs/rights.md): `market` / `market=from_token` on the catalog, playlist,
queue and player answers; a play refused with a reason (REST 403 in Spotify's shape, the websocket's
stable code); a catalog reload that takes the playing track down reaching the playing device."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.auth import Auth, write_secret
from gateway.markets import Listener
from storage.memory import MemoryStore
from syncopate.server import LocalServer, ServerSpec
from tests.support.catalog import CatalogBuilder, tid, turi
from tests.support.player import Device, WsError

SECRET = "rights-rest-secret-0123456789-abcdefghij"
ARTIST, ALBUM = "r" + "0" * 21, "a" + "0" * 21
SE_ONLY = ["NO", "SE"]


def write_catalog(path, removed=(), markets=None) -> None:
    markets = {1: SE_ONLY} if markets is None else markets
    b = CatalogBuilder()
    b.artist(ARTIST, "Artist")
    b.album(ALBUM, [ARTIST], "Album")
    for i in range(4):
        if i not in removed:
            b.track(tid(i), ALBUM, name=f"Song {i}", duration_ms=200_000, markets=markets.get(i))
    path.write_bytes(orjson.dumps(b.build().to_dict()))


def _files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rights")
    cat = d / "catalog.json"
    write_catalog(cat)
    return d, cat, write_secret(d / "secret.key", SECRET)


async def start(tmp_path_factory):
    d, cat, key = await asyncio.to_thread(_files, tmp_path_factory)     # file I/O off the loop
    spec = ServerSpec(data_dir=str(d), port=0, hosts=1, catalog=str(cat), secret_file=str(key),
                      gateway={"rest_rate": 1000, "rest_burst": 1000})
    srv = await LocalServer(spec, store=MemoryStore()).start()
    return srv, cat


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    srv, _ = await start(tmp_path_factory)
    yield srv
    await srv.stop()


async def get(http, server, token, path):
    async with http.get(f"{server.url}/v1/{path}", headers={"Authorization": f"Bearer {token}"}) as r:
        data = await r.read()
        return r.status, (orjson.loads(data) if data else None)


async def put(http, server, token, path, body):
    async with http.put(f"{server.url}/v1/{path}", data=orjson.dumps(body),
                        headers={"Authorization": f"Bearer {token}"}) as r:
        data = await r.read()
        return r.status, (orjson.loads(data) if data else None)


async def add_user(http, server, uid, country):
    r = await http.post(f"{server.url}/admin/users", json={"id": uid, "country": country},
                        headers={"Authorization": f"Bearer {server.auth.mint_operator()}"})
    assert r.status == 201, await r.text()


async def test_catalog_objects_carry_is_playable_and_restrictions_with_a_market(server, http, unique):
    tok = Auth(SECRET).mint(unique)
    st, body = await get(http, server, tok, f"tracks/{tid(1)}")
    assert st == 200 and body["available_markets"] == SE_ONLY and "is_playable" not in body
    st, body = await get(http, server, tok, f"tracks/{tid(1)}?market=US")
    assert body["is_playable"] is False and body["restrictions"] == {"reason": "market"}
    assert "available_markets" not in body
    st, body = await get(http, server, tok, f"tracks?ids={tid(0)},{tid(1)}&market=SE")
    assert [t["is_playable"] for t in body["tracks"]] == [True, True]
    st, body = await get(http, server, tok, f"albums/{ALBUM}/tracks?market=US")
    assert [t["is_playable"] for t in body["items"]] == [True, False, True, True]


async def test_market_from_token_is_the_users_country(server, http, unique):
    await add_user(http, server, unique, "SE")
    tok = Auth(SECRET).mint(unique)
    st, body = await get(http, server, tok, f"tracks/{tid(1)}?market=from_token")
    assert st == 200 and body["is_playable"] is True
    other = Auth(SECRET).mint(unique + "-us")            # no account: the default country, US
    st, body = await get(http, server, other, f"tracks/{tid(1)}?market=from_token")
    assert body["is_playable"] is False


@pytest.mark.parametrize("bad", ["usa", "us", "from-token", "1"])
async def test_a_bad_market_is_a_400_in_spotifys_shape(server, http, unique, bad):
    st, body = await get(http, server, Auth(SECRET).mint(unique), f"tracks/{tid(1)}?market={bad}")
    assert st == 400 and body["error"]["status"] == 400 and "market" in body["error"]["message"]


async def test_from_token_with_an_app_token_is_refused(server, http):
    st, body = await get(http, server, Auth(SECRET).mint_app("c" * 20), f"tracks/{tid(1)}?market=from_token")
    assert st == 400 and "user" in body["error"]["message"]


async def test_playing_an_unplayable_track_is_refused_over_rest_and_ws(server, http, unique):
    tok = Auth(SECRET).mint(unique)
    dev = await Device(http, server.url, tok, "d0", name="Laptop", type="computer").connect()
    try:
        await dev.register()
        st, body = await put(http, server, tok, "me/player/play?device_id=d0", {"uris": [turi(1)]})
        assert st == 403 and body["error"]["status"] == 403 and "reason" not in body["error"]
        assert body["error"]["restriction"] == "market"
        assert "not available in market US" in body["error"]["message"]
        with pytest.raises(WsError) as ei:
            await dev.call("player.play", {"device_id": "d0", "uris": [turi(1)]})
        assert ei.value.code == "TRACK_UNAVAILABLE" and ei.value.error["details"]["restriction"] == "market"
        # a client can't claim another market: the device group plays in the account's
        with pytest.raises(WsError):
            await dev.call("player.play", {"device_id": "d0", "uris": [turi(1)], "market": "SE"})
        # an album context skips it, and the queue and state say so
        await dev.call("player.play", {"device_id": "d0", "context_uri": f"spotify:album:{ALBUM}"})
        c = await dev.wait_state(lambda c: c["player"]["track"] and c["player"]["track"]["uri"] == turi(0))
        assert c["next_tracks"] == [turi(2), turi(3)] and c["player"]["market"] == "US"
        assert c["player"]["track"]["is_playable"] is True
        st, q = await get(http, server, tok, "me/player/queue?market=from_token")
        assert [t["uri"] for t in q["queue"]] == [turi(2), turi(3)]
        assert q["currently_playing"]["is_playable"] is True
        st, state = await get(http, server, tok, "me/player?market=US")
        assert state["item"]["is_playable"] is True
        await dev.call("player.next", {})
        c = await dev.wait_state(lambda c: c["player"]["track"]["uri"] != turi(0))
        assert c["player"]["track"]["uri"] == turi(2)
    finally:
        await dev.close()


async def test_a_change_of_country_reaches_the_device_group_without_the_gateway(server, http, unique):
    """The account tells the device group (market_changed, an effect): the gateway's own cache of the
    user's country (REST market=from_token) is not what a playback command is checked against."""
    await add_user(http, server, unique, "SE")
    tok = Auth(SECRET).mint(unique)
    server.gateway.ctx.markets._cache[unique] = (Listener("US"), float("inf"))      # a stale gateway cache
    dev = await Device(http, server.url, tok, "d0", name="Laptop", type="computer").connect()
    try:
        await dev.register()
        await dev.call("player.play", {"device_id": "d0", "uris": [turi(1), turi(2)]})
        c = await dev.wait_state(lambda c: c["player"]["track"] and c["player"]["track"]["uri"] == turi(1))
        assert c["player"]["market"] == "SE" and c["player"]["track"]["is_playable"] is True
        r = await http.patch(f"{server.url}/admin/users/{unique}", json={"country": "US"},
                             headers={"Authorization": f"Bearer {server.auth.mint_operator()}"})
        assert r.status == 200, await r.text()
        server.gateway.ctx.markets._cache[unique] = (Listener("SE"), float("inf"))  # stale the other way round
        # the playing track may not play in the new country: moved off it, as a takedown
        push = await dev.wait_for(lambda c: c["reason"] == "track_unavailable")
        assert push["unavailable"] == {"uri": turi(1), "reason": "market", "market": "US"}
        assert push["player"]["market"] == "US" and push["player"]["track"]["uri"] == turi(2)
        with pytest.raises(WsError) as ei:
            await dev.call("player.play", {"device_id": "d0", "uris": [turi(1)], "market": "SE"})
        assert ei.value.code == "TRACK_UNAVAILABLE" and ei.value.error["details"]["market"] == "US"
        st, body = await put(http, server, tok, "me/player/play?device_id=d0&market=SE", {"uris": [turi(1)]})
        assert st == 403 and body["error"]["market"] == "US"
    finally:
        await dev.close()


async def test_a_takedown_reaches_the_playing_device_and_says_why(tmp_path_factory, http, unique):
    srv, cat_file = await start(tmp_path_factory)
    try:
        tok = Auth(SECRET).mint(unique)
        dev = await Device(http, srv.url, tok, "d0", name="Laptop", type="computer").connect()
        await dev.register()
        await dev.call("player.play", {"device_id": "d0", "uris": [turi(0), turi(2)]})
        await dev.wait_state(lambda c: c["player"]["is_playing"] and c["player"]["track"]["uri"] == turi(0))
        await asyncio.to_thread(write_catalog, cat_file, removed={0})
        assert await srv.reload_catalog() == 1
        push = await dev.wait_for(lambda c: c["reason"] == "track_unavailable")
        assert push["unavailable"] == {"uri": turi(0), "reason": "removed", "market": "US"}
        assert push["player"]["track"]["uri"] == turi(2) and push["player"]["is_playing"]
        # the REST catalog serves the reloaded file too
        st, _ = await get(http, srv, tok, f"tracks/{tid(0)}")
        assert st == 404
        # a market withdrawn from the new playing track: stops (nothing left), and says why
        await asyncio.to_thread(write_catalog, cat_file, removed={0}, markets={2: ["SE"]})
        await srv.reload_catalog()
        push = await dev.wait_for(lambda c: c["reason"] == "track_unavailable" and c["unavailable"]["uri"] == turi(2))
        assert push["unavailable"]["reason"] == "market" and push["player"]["track"] is None
        assert not push["player"]["is_playing"]
        await dev.close()
    finally:
        await srv.stop()


async def test_a_bad_catalog_file_is_refused_and_changes_nothing(tmp_path_factory, http, unique):
    srv, cat_file = await start(tmp_path_factory)
    try:
        await asyncio.to_thread(cat_file.write_text, '{"tracks": []}')
        with pytest.raises(ValueError):
            await srv.reload_catalog()
        st, body = await get(http, srv, Auth(SECRET).mint(unique), f"tracks/{tid(0)}")
        assert st == 200
    finally:
        await srv.stop()
