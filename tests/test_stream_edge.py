"""Signed stream manifests and the stand-in edge (docs/rights.md): the active device's push carries
signed URLs for the current and next tracks, refreshed before they expire; the edge serves the
generated audio with ranges to that device only, and refuses forged, expired and other devices' URLs."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson
import pytest

from gateway.auth import Auth
from gateway.edge import audio_bytes, audio_size, parse_range, rate_of
from gateway.stream_sign import BITRATES, StreamClaim, StreamSigner
from storage.memory import MemoryStore
from syncopate.server import LocalServer, ServerSpec
from tests.support.catalog import CatalogBuilder, tid, turi
from tests.support.player import Device
from tests.support.servers import REST_FAST, catalog_server, write_server_files

SECRET = "stream-edge-secret-0123456789-abcdefghij"
ARTIST, ALBUM = "r" + "0" * 21, "a" + "0" * 21
TTL_S = 3


def _catalog():
    b = CatalogBuilder()
    b.artist(ARTIST, "Artist")
    b.album(ALBUM, [ARTIST], "Album")
    for i in range(5):
        b.track(tid(i), ALBUM, name=f"Song {i}", duration_ms=30_000 + 1000 * i, markets={1: ["SE"]}.get(i))
    return b.build()


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    async with catalog_server(tmp_path_factory, "edge", _catalog(), SECRET,
                              gateway={**REST_FAST, "stream_url_ttl_s": TTL_S}) as srv:
        yield srv


def mint(user, **kw):
    return Auth(SECRET).mint(user, **kw)


async def fetch(http, server, url, token=None, headers=None):
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    async with http.get(server.url + url, headers=h) as r:
        return r.status, dict(r.headers), await r.read()


async def playing(http, server, user, *, uris=None, n=2):
    tok = mint(user, device_id="d0")
    devs = [await Device(http, server.url, tok if i == 0 else mint(user, device_id=f"d{i}"), f"d{i}",
                         name=f"D{i}", type="computer").connect() for i in range(n)]
    for d in devs:
        await d.register()
    await devs[0].call("player.play", {"device_id": "d0", "uris": uris or [turi(0), turi(1), turi(2), turi(3)]})
    push = await devs[0].wait_for(lambda c: c.get("stream") is not None)
    return tok, devs, push


# == unit: signing, ranges, audio ===============================================================
def test_every_signed_field_is_covered_by_the_signature():
    s = StreamSigner(SECRET)
    c = StreamClaim("alice", "d0", tid(0), 320, 2_000_000_000)
    sig = s.sign(c)
    assert s.valid(c, sig)
    for field, other in (("user", "bob"), ("device", "d1"), ("track_id", tid(1)), ("kbps", 160),
                         ("expires", 2_000_000_001)):
        assert not s.valid(dataclasses.replace(c, **{field: other}), sig), field
    assert not StreamSigner(SECRET + "x").valid(c, sig)          # another key


def test_the_signature_is_hmac_sha256_of_the_documented_message():
    # the signer computes HMAC by its definition from precomputed padded-key states (faster than
    # hmac.digest); it must be exactly the standard HMAC-SHA256, base64url without padding, and the
    # manifest's URLs (which build the message without a StreamClaim) must carry the same signature
    import base64
    import hmac

    from catalog import Catalog
    from gateway.stream_sign import _message
    s = StreamSigner(SECRET)
    for user, device, kbps in (("alice", "d0", 96), ("bob/ü x", "dev?&=", 160), ("", "", 320)):
        c = StreamClaim(user, device, tid(0), kbps, 2_000_000_000 + kbps)
        want = base64.urlsafe_b64encode(hmac.digest(s._key, _message(c), "sha256")).rstrip(b"=").decode()
        assert s.sign(c) == want
    cat = Catalog.generated(tracks=50)
    ts = [x for x in cat.tracks if x.markets is None][:3]
    cl = {"player": {"track": {"uri": ts[0].uri}, "market": "US"}, "next_tracks": [t.uri for t in ts[1:]]}
    man = s.manifest(cat, cl, "u 1", "d/1", "premium", now=1_900_000_000.5)
    assert [t["uri"] for t in man["tracks"]] == [t.uri for t in ts]
    for t, entry in zip(ts, man["tracks"]):
        for k, url in entry["urls"].items():
            c = StreamClaim("u 1", "d/1", t.id, int(k), 1_900_000_000 + s.ttl_s)
            assert url == s.url(c)


def test_free_and_premium_get_their_bitrates():
    from catalog import Catalog
    cat = Catalog.generated(tracks=50)
    t = next(x for x in cat.tracks if x.markets is None)
    cl = {"player": {"track": {"uri": t.uri}, "market": "US"}, "next_tracks": []}
    s = StreamSigner(SECRET)
    free = s.manifest(cat, cl, "u", "d", "free")
    prem = s.manifest(cat, cl, "u", "d", "premium")
    assert free["tracks"][0]["bitrates"] == [96, 160] == list(BITRATES["free"])
    assert prem["tracks"][0]["bitrates"] == [96, 160, 320]
    assert set(free["tracks"][0]["urls"]) == {"96", "160"}
    assert "/160?" in free["first_chunk"]["url"] and "/320?" in prem["first_chunk"]["url"]


def test_ranges():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 10)
    assert parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=-10", 100) == (90, 100)
    assert parse_range("bytes=50-500", 100) == (50, 100)
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("bytes=-0", 100) == "unsatisfiable"
    assert parse_range("bytes=5-1", 100) is None
    assert parse_range("bytes=0-1,5-9", 100) is None          # multipart: not served, whole file
    assert parse_range("items=0-1", 100) is None


def test_the_audio_is_a_deterministic_wav_at_the_named_bitrate():
    size = audio_size(30_000, 160)
    assert size == 44 + 30 * 20_000                               # 160 kbps = 20,000 bytes a second
    whole = audio_bytes(tid(0), 30_000, 160, 0, size)
    assert len(whole) == size and whole[:4] == b"RIFF" and whole[8:16] == b"WAVEfmt "
    assert int.from_bytes(whole[24:28], "little") == rate_of(160)
    assert audio_bytes(tid(0), 30_000, 160, 1000, 5000) == whole[1000:5000]
    assert audio_bytes(tid(1), 30_000, 160, 0, size) != whole     # another track, another tune


# == the manifest on the pushes ===================================================================
async def test_the_active_device_gets_a_manifest_for_the_current_and_next_tracks(server, http, unique):
    tok, devs, push = await playing(http, server, unique)
    try:
        st = push["stream"]
        assert [t["uri"] for t in st["tracks"]] == [turi(0), turi(2), turi(3)]      # 1: not in US
        assert st["tracks"][0]["current"] and st["tracks"][0]["bitrates"] == [96, 160, 320]
        assert st["expires_at"] - time.time() <= TTL_S + 1
        q = parse_qs(urlsplit(st["tracks"][0]["urls"]["320"]).query)
        assert q["u"] == [unique] and q["d"] == ["d0"]
        assert st["first_chunk"]["url"] == st["tracks"][0]["urls"]["320"]
        # the other device is told the same cluster, without URLs
        other = await devs[1].wait_for(lambda c: c["revision"] == push["revision"])
        assert "stream" not in other
        # a transfer moves the manifest to the new active device
        await devs[0].call("player.transfer", {"device_ids": ["d1"]})
        moved = await devs[1].wait_for(lambda c: c["active_device_id"] == "d1" and c.get("stream"))
        assert parse_qs(urlsplit(moved["stream"]["tracks"][0]["urls"]["96"]).query)["d"] == ["d1"]
        # next: a push with the new current track's manifest
        await devs[1].call("player.next", {})
        nxt = await devs[1].wait_for(lambda c: c.get("stream") and c["stream"]["tracks"][0]["uri"] == turi(2))
        assert nxt["player"]["track"]["uri"] == turi(2)
    finally:
        for d in devs:
            await d.close()


async def test_the_active_devices_register_and_resync_answers_carry_the_manifest(server, http, unique):
    tok, devs, push = await playing(http, server, unique)
    again = other = None
    try:
        # the active device comes back on a new socket: its register answer carries the manifest
        again = await Device(http, server.url, tok, "d0", name="D0", type="computer").connect()
        ans = await again.register()
        assert [t["uri"] for t in ans["stream"]["tracks"]] == [turi(0), turi(2), turi(3)]
        q = parse_qs(urlsplit(ans["stream"]["tracks"][0]["urls"]["320"]).query)
        assert q["u"] == [unique] and q["d"] == ["d0"]
        assert set(ans["stream"]) == set(push["stream"])                 # the shape of the pushes'
        # ...added to the group's state, not in place of it
        assert ans["active_device_id"] == "d0" and ans["revision"] >= push["revision"]
        # another device's answer has none
        other = await Device(http, server.url, mint(unique, device_id="d1"), "d1", name="D1", type="computer").connect()
        assert "stream" not in await other.register()
        # a resync of the active device's socket carries it; of the other's, not
        hub, subs = server.gateway.ctx.hub, server.gateway.ctx.subscriptions
        for conn in hub.user_conns(unique):            # every socket of the user that follows the group
            if subs.follows(conn, f"devicegroup:{unique}"):
                subs.resync(conn, f"devicegroup:{unique}")
        deadline = time.monotonic() + 10
        while not (again.resyncs and other.resyncs):
            assert time.monotonic() < deadline, "the resyncs did not arrive"
            await asyncio.sleep(0.02)
        assert [t["uri"] for t in again.resyncs[-1]["stream"]["tracks"]] == [turi(0), turi(2), turi(3)]
        assert again.resyncs[-1]["revision"] == other.resyncs[-1]["revision"] >= ans["revision"]
        assert "stream" not in other.resyncs[-1]
    finally:
        for d in devs + [x for x in (again, other) if x is not None]:
            await d.close()


async def test_urls_are_refreshed_before_they_expire_while_playing(server, http, unique):
    tok, devs, push = await playing(http, server, unique, n=1)
    try:
        first = push["stream"]
        end = time.monotonic() + TTL_S + 5
        while not devs[0].manifests and time.monotonic() < end:
            devs[0]._changed.clear()
            try:
                await asyncio.wait_for(devs[0]._changed.wait(), end - time.monotonic())
            except TimeoutError:
                pass
        assert devs[0].manifests, "no refresh within the URL's life"
        fresh = devs[0].manifests[0]
        assert time.time() < first["expires_at"] + 1                # it came before the old URLs expired
        assert fresh["expires_at"] > first["expires_at"]
        assert [t["uri"] for t in fresh["tracks"]] == [t["uri"] for t in first["tracks"]]
        st, _, body = await fetch(http, server, fresh["tracks"][0]["urls"]["96"], tok)
        assert st == 200
    finally:
        await devs[0].close()


# == the edge ======================================================================================
async def test_the_first_chunk_a_full_fetch_and_a_range_past_the_end(server, http, unique):
    tok, devs, push = await playing(http, server, unique, n=1)
    try:
        fc = push["stream"]["first_chunk"]
        st, h, body = await fetch(http, server, fc["url"], tok, {"Range": fc["range"]})
        size = audio_size(30_000, 320)
        assert st == 206 and h["Content-Range"] == f"bytes 0-{64 * 1024 - 1}/{size}" and len(body) == 64 * 1024
        assert body == audio_bytes(tid(0), 30_000, 320, 0, 64 * 1024)
        st, h, body = await fetch(http, server, fc["url"], tok)
        assert st == 200 and len(body) == size and h["Accept-Ranges"] == "bytes"
        st, h, body = await fetch(http, server, fc["url"], tok, {"Range": f"bytes={size}-"})
        assert st == 416 and h["Content-Range"] == f"bytes */{size}"
        assert orjson.loads(body)["error"]["status"] == 416
        st, h, body = await fetch(http, server, fc["url"], tok, {"Range": "bytes=-100"})
        assert st == 206 and body == audio_bytes(tid(0), 30_000, 320, size - 100, size)
    finally:
        await devs[0].close()


def _tamper(url: str, key: str, value) -> str:
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    path = parts.path
    if key == "track":
        path = path.replace(tid(0), tid(3))
    elif key == "kbps":
        path = path.rsplit("/", 1)[0] + "/320"
    else:
        q[key] = value
    return f"{path}?{urlencode(q)}"


async def test_tampered_expired_and_other_devices_urls_are_refused(server, http, unique):
    tok, devs, push = await playing(http, server, unique, n=1)
    try:
        url = push["stream"]["tracks"][0]["urls"]["160"]
        e = int(parse_qs(urlsplit(url).query)["e"][0])
        for key, value in (("u", unique + "x"), ("d", "d1"), ("e", e + 600), ("s", "A" * 43),
                           ("track", None), ("kbps", None)):
            st, _, body = await fetch(http, server, _tamper(url, key, value), tok)
            err = orjson.loads(body)["error"]
            assert st == 403 and err["code"] == "STREAM_URL_REFUSED" and err["why"] == "signature", key
        # expired: a correctly signed URL whose time has passed
        signer = server.gateway.ctx.signer
        old = signer.url(StreamClaim(unique, "d0", tid(0), 160, int(time.time()) - 1))
        st, _, body = await fetch(http, server, old, tok)
        assert st == 403 and orjson.loads(body)["error"]["why"] == "expired"
        # another device of the same user (its own device-bound token) may not use d0's URL
        st, _, body = await fetch(http, server, url, mint(unique, device_id="d1"))
        assert st == 403 and orjson.loads(body)["error"]["why"] == "device"
        # a token without a device names it in the header
        plain = mint(unique)
        st, _, _ = await fetch(http, server, url, plain, {"X-Syncopate-Device": "d0"})
        assert st == 200
        st, _, body = await fetch(http, server, url, plain, {"X-Syncopate-Device": "d9"})
        assert st == 403 and orjson.loads(body)["error"]["why"] == "device"
        # another user, and no token at all
        st, _, body = await fetch(http, server, url, mint(unique + "-other", device_id="d0"))
        assert st == 403 and orjson.loads(body)["error"]["why"] == "user"
        st, _, _ = await fetch(http, server, url)
        assert st == 401
        # a URL for a track the user may not play (not licensed in US) is refused even when signed
        bad = signer.url(StreamClaim(unique, "d0", tid(1), 160, int(time.time()) + 60))
        st, _, body = await fetch(http, server, bad, tok)
        assert st == 403 and orjson.loads(body)["error"]["why"] == "unavailable"
        # malformed
        st, _, body = await fetch(http, server, f"/edge/v1/stream/{tid(0)}/160", tok)
        assert st == 403 and orjson.loads(body)["error"]["why"] == "malformed"
    finally:
        await devs[0].close()


async def test_a_push_that_keeps_the_tracks_reuses_the_fresh_manifest(server, http, unique):
    tok, devs, push = await playing(http, server, unique, n=1)
    try:
        await devs[0].call("player.volume", {"volume_percent": 30})
        vol = await devs[0].wait_for(lambda c: c["reason"] == "volume_changed" and c.get("stream"))
        assert vol["stream"] == push["stream"]                      # same URLs: nothing re-signed
        await devs[0].call("player.next", {})
        nxt = await devs[0].wait_for(lambda c: c.get("stream") and c["stream"]["tracks"][0]["uri"] != turi(0))
        assert nxt["stream"]["tracks"][0]["urls"] != push["stream"]["tracks"][0]["urls"]
    finally:
        await devs[0].close()


async def test_the_stream_key_must_not_be_the_token_key(tmp_path_factory):
    _, key = await asyncio.to_thread(write_server_files, tmp_path_factory, "edge-keys", _catalog(), SECRET)
    spec = ServerSpec(data_dir=str(Path(key).parent), port=0, hosts=1, secret_file=key, stream_secret_file=key)
    with pytest.raises(ValueError, match="stream URL key"):
        await LocalServer(spec, store=MemoryStore()).start()
