"""The catalog reload and the stream manifests on the real server (hosts and gateway as Ray actors,
separate processes, each with its own catalog): a takedown reaches a playing device (docs/rights.md)."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from syncopate.server import RayServer, ServerSpec
from tests.support.catalog import CatalogBuilder
from tests.support.player import Device

ARTIST, ALBUM = "r" + "0" * 21, "a" + "0" * 21


def tid(i: int) -> str:
    return f"t{i:021d}"


def turi(i: int) -> str:
    return f"spotify:track:{tid(i)}"


def write_catalog(path, removed=()) -> None:
    b = CatalogBuilder()
    b.artist(ARTIST, "Artist")
    b.album(ALBUM, [ARTIST], "Album")
    for i in range(3):
        if i not in removed:
            b.track(tid(i), ALBUM, duration_ms=200_000)
    path.write_bytes(orjson.dumps(b.build().to_dict()))


@pytest.fixture(scope="module")
def ray_rights(ray_session, tmp_path_factory):
    d = tmp_path_factory.mktemp("ray-rights")
    cat = d / "catalog.json"
    write_catalog(cat)
    server = RayServer(ServerSpec(data_dir=str(d), port=0, hosts=1, catalog=str(cat), log_level="WARNING")).start()
    yield server, cat
    server.stop()


async def test_a_reload_reaches_every_process_and_the_playing_device(ray_rights, http, unique):
    server, cat = ray_rights
    from gateway.auth import Auth
    tok = Auth(server.secret).mint(unique, device_id="d0")
    dev = await Device(http, server.url, tok, "d0", name="Laptop", type="computer").connect()
    try:
        await dev.register()
        await dev.call("player.play", {"device_id": "d0", "uris": [turi(0), turi(1)]})
        first = await dev.wait_for(lambda c: c.get("stream") is not None, timeout=20)
        assert first["stream"]["tracks"][0]["uri"] == turi(0)          # the gateway actor signs
        await asyncio.to_thread(write_catalog, cat, removed={0})
        told = await asyncio.to_thread(server.reload_catalog)
        assert told == 1
        push = await dev.wait_for(lambda c: c["reason"] == "track_unavailable", timeout=20)
        assert push["unavailable"]["uri"] == turi(0) and push["unavailable"]["reason"] == "removed"
        assert push["player"]["track"]["uri"] == turi(1)               # the host's catalog changed too
        assert push["stream"]["tracks"][0]["uri"] == turi(1)
        # a bad file is refused before any process takes it
        await asyncio.to_thread(cat.write_text, "{}")
        with pytest.raises(ValueError):
            await asyncio.to_thread(server.reload_catalog)
        async with http.get(f"{server.url}/v1/tracks/{tid(1)}", headers={"Authorization": f"Bearer {tok}"}) as r:
            assert r.status == 200
    finally:
        await dev.close()
