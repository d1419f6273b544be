"""Listening events at the edge (docs/events.md): `POST /v1/me/player/events`, the websocket's
`device.events`, `PUT /v1/me/player/private-session`, recently played read from the pipeline, and
the operator's stream counts, on an in-process server whose consumer runs the SQLite log."""
from __future__ import annotations

import time

import orjson
import pytest

from gateway.auth import Auth, write_secret
from storage.memory import MemoryStore
from syncopate.server import LocalServer, ServerSpec
from tests.support.player import Device
from tests.support.playlists import eventually

SECRET = "events-rest-secret-0123456789-abcdefgh"


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    spec = ServerSpec(data_dir=str(tmp_path_factory.mktemp("events")), port=0, hosts=1,
                      secret_file=str(write_secret(tmp_path_factory.mktemp("key") / "secret.key", SECRET)),
                      gateway={"rest_rate": 1000, "rest_burst": 1000})
    srv = await LocalServer(spec, store=MemoryStore()).start()
    yield srv
    await srv.stop()


def tracks(server, n):
    out = [t.uri for t in server.gateway.ctx.catalog.tracks if t.duration_ms >= 90_000][:n]
    assert len(out) == n
    return out


async def call(http, server, token, method, path, body=None, raw_body=None):
    kw = {"data": orjson.dumps(body)} if body is not None else ({"data": raw_body} if raw_body is not None else {})
    async with http.request(method, f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"}, **kw) as r:
        data = await r.read()
        return r.status, (orjson.loads(data) if data else None)


def ev(eid, uri, at, ms=60_000, device="phone", **kw):
    return {"event_id": eid, "device_id": device, "uri": uri, "played_at_ms": at, "ms_played": ms, **kw}


async def test_upload_over_rest_answers_each_event_and_feeds_recently_played(server, http, unique):
    tok = Auth(SECRET).mint(unique)
    uris = tracks(server, 3)
    now = int(time.time() * 1000)
    body = {"events": [ev("a", uris[0], now - 3_000_000), ev("b", uris[1], now - 2_000_000),
                       ev("c", uris[2], now + 3_600_000), ev("d", "spotify:track:" + "z" * 22, now - 1_000_000)]}
    s, res = await call(http, server, tok, "POST", "/v1/me/player/events", body)
    assert s == 200
    assert [(r["event_id"], r["status"], r.get("reason")) for r in res["results"]] == [
        ("a", "accepted", None), ("b", "accepted", None), ("c", "refused", "time_in_future"),
        ("d", "refused", "unknown_track")]
    s, again = await call(http, server, tok, "POST", "/v1/me/player/events", body)
    assert [r["status"] for r in again["results"]] == ["duplicate", "duplicate", "refused", "refused"]

    async def two():
        s, page = await call(http, server, tok, "GET", "/v1/me/player/recently-played?limit=10")
        return page if s == 200 and len(page["items"]) == 2 else None
    page = await eventually(two, what="two uploaded plays in recently played")
    assert [i["track"]["uri"] for i in page["items"]] == [uris[1], uris[0]]
    op = Auth(SECRET).mint_operator()
    s, counts = await call(http, server, op, "GET", f"/admin/events/stream-counts?uris={uris[0]},{uris[1]}")
    assert s == 200 and all(sum(d.values()) >= 1 for d in counts["counts"].values())
    s, err = await call(http, server, tok, "GET", "/admin/events/stream-counts")
    assert s == 403                                          # a user's token is not the operator's
    s, err = await call(http, server, op, "GET", "/admin/events/stream-counts?from=yesterday")
    assert s == 400 and err["error"]["code"] == "INVALID_FIELD"


async def test_a_malformed_upload_is_400_and_records_nothing(server, http, unique):
    tok = Auth(SECRET).mint(unique)
    for body, raw_body, code in [({"events": []}, None, "INVALID_FIELD"), ({"events": "x"}, None, "INVALID_FIELD"),
                                 ({"events": [], "extra": 1}, None, "BAD_REQUEST"), (None, b"not json", "BAD_REQUEST"),
                                 ({"events": [{}] * 201}, None, "LIMIT_EXCEEDED")]:
        s, err = await call(http, server, tok, "POST", "/v1/me/player/events", body, raw_body)
        assert s == 400 and err["error"]["code"] == code, (body, err)
        assert err["error"]["status"] == 400 and err["error"]["message"]
    s, page = await call(http, server, tok, "GET", "/v1/me/player/recently-played")
    assert s == 200 and page["items"] == []


async def test_upload_needs_the_streaming_scope(server, http, unique):
    tok = Auth(SECRET).mint(unique, scope={"user-read-recently-played"})
    now = int(time.time() * 1000)
    s, err = await call(http, server, tok, "POST", "/v1/me/player/events", {"events": [ev("a", tracks(server, 1)[0], now)]})
    assert s == 403


async def test_private_session_over_rest_and_plays_over_the_websocket(server, http, unique):
    tok = Auth(SECRET).mint(unique)
    d = await Device(http, server.url, tok, "phone", name="Phone").connect()
    try:
        await d.register()
        s, _ = await call(http, server, tok, "PUT", "/v1/me/player/private-session?state=true")
        assert s == 204
        s, devs = await call(http, server, tok, "GET", "/v1/me/player/devices")
        assert devs["devices"][0]["is_private_session"] is True
        s, err = await call(http, server, tok, "PUT", "/v1/me/player/private-session?state=maybe")
        assert s == 400 and err["error"]["code"] == "INVALID_FIELD"
        uris = tracks(server, 2)
        now = int(time.time() * 1000)
        res = await d.call("device.events", {"events": [ev("p1", uris[0], now - 1_000_000)]})
        assert res["accepted"] == 1
        await d.call("player.private_session", {"enabled": False})
        res = await d.call("device.events", {"events": [ev("p2", uris[1], now - 500_000)]})
        assert [r["status"] for r in res["results"]] == ["accepted"]

        async def public_one():
            s, page = await call(http, server, tok, "GET", "/v1/me/player/recently-played")
            return page if page["items"] else None
        page = await eventually(public_one, what="the public play in recently played")
        assert [i["track"]["uri"] for i in page["items"]] == [uris[1]]     # the private play is not there

        async def both_counted():
            got = await server.events.counts.stream_counts(uris)
            return got if len(got) == 2 else None
        got = await eventually(both_counted, what="both plays counted for royalties")
        assert all(sum(v.values()) >= 1 for v in got.values())
        s, devs = await call(http, server, tok, "GET", "/v1/me/player/devices")
        assert devs["devices"][0]["is_private_session"] is False
    finally:
        await d.close()
