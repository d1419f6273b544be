"""Response shapes checked against Spotify's OpenAPI description (sonallux/spotify-web-api,
fixed-spotify-open-api.yml): album.label is a string; PUT and DELETE /v1/me/following answer 204."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.spotify_clients import spotipy_client, tekore_client
from tests.support.servers import memory_server


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    async with memory_server(tmp_path_factory, "shapes", gateway={}) as srv:
        yield srv


async def test_album_label_is_a_string(server, unique):
    cat = server.gateway.ctx.catalog
    album = next(iter(cat.albums))
    token = server.auth.mint(unique)
    async with aiohttp.ClientSession() as http:
        body = await (await http.get(f"{server.url}/v1/albums/{album.id}",
                                     headers={"Authorization": f"Bearer {token}"})).json()
    assert isinstance(body["label"], str) and body["label"]
    full = await asyncio.to_thread(tekore_client(server.url, token).album, album.id)
    assert full.label == body["label"]


async def test_following_put_and_delete_answer_204(server, unique):
    artist = next(iter(server.gateway.ctx.catalog.artists)).id
    h = {"Authorization": f"Bearer {server.auth.mint(unique)}"}
    async with aiohttp.ClientSession() as http:
        for method in ("PUT", "DELETE"):
            r = await http.request(method, f"{server.url}/v1/me/following?type=artist&ids={artist}", headers=h)
            assert (r.status, await r.read()) == (204, b""), method
    sp = spotipy_client(server.url, server.auth.mint(unique))
    await asyncio.to_thread(sp.user_follow_artists, [artist])
    assert await asyncio.to_thread(sp.current_user_following_artists, [artist]) == [True]
    await asyncio.to_thread(sp.user_unfollow_artists, [artist])
    assert await asyncio.to_thread(sp.current_user_following_artists, [artist]) == [False]
