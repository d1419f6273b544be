"""Hostile clients against the real server: each attack is refused the documented way, and a
legitimate client on the same gateway sees no failed request and no stall meanwhile.

The attackers are simulations/attacks.py; the expected behaviours are docs/security.md's. One
RayServer of this module's own (2 hosts, 1 gateway, SQLite, the default limits), so that its
memory and its store belong to these attacks alone. Every attack runs beside a `Bystander`: closed
loops of single-attempt requests (no retries) to entities on both hosts, whose every latency must
stay under STALL_MS and which must see no error at all.
"""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import types
from pathlib import Path

import orjson
import psutil
import pytest

from actors.placement import owner
from gateway.context import GatewayConfig
from protocols.uris import new_id
from simulations import attacks as A
from simulations.client import ClientError, SimClient
from simulations.harness import Target
from simulations.resources import ray_server_pids

HOSTS = 2
STALL_MS = 500.0                     # a legitimate request slower than this during an attack is a stall
REFUSE_MS = 100.0                    # a quadratic varint must be refused (or its socket closed) this fast
VARINT_RUN = 100_000                 # bytes of 0xFF: about 1 s of CPU today, quadratic in the length
LARGE = 10_000                       # entries of the large playlist (the per-playlist maximum)
CFG = GatewayConfig()                # the defaults the server runs with


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    from syncopate.server import RayServer, ServerSpec
    spec = ServerSpec(data_dir=str(tmp_path_factory.mktemp("adversarial")), port=0, hosts=HOSTS, log_level="ERROR")
    srv = RayServer(spec).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def target(server):
    return Target(url_fn=lambda: server.url, secret=server.secret)


def _pid_on(host: int) -> str:
    """A fresh playlist id that host `host` owns (bounded search: each try hits with p = 1/HOSTS)."""
    for _ in range(1000):
        pid = new_id()
        if owner(f"playlist:{pid}", HOSTS) == host:
            return pid
    raise AssertionError("no playlist id found for the host")


@pytest.fixture(scope="module")
async def world(target):
    """The attacker's playlists (a large one, one for its Yjs sockets) and the bystander's, one on
    each host."""
    w = types.SimpleNamespace(large=_pid_on(0), yjs=_pid_on(1), mine=[_pid_on(0), _pid_on(1)])
    tracks = [t.uri for t in target.catalog.tracks]
    w.track = tracks[0]
    abuser = SimClient(target.url, target.token("abuser"), reconnect=False)
    legit = SimClient(target.url, target.token("legit"), reconnect=False)
    await abuser.connect()
    await legit.connect()
    try:
        await A.large_playlist(abuser, w.large, tracks, LARGE)
        await abuser.call("playlist.create", {"id": w.yjs, "name": "abuse: yjs", "public": True})
        for pid in w.mine:
            await legit.call("playlist.create", {"id": pid, "name": "legit", "public": False})
            await legit.call("playlist.add", {"id": pid, "uris": tracks[:20]})
    finally:
        await abuser.close()
        await legit.close()
    return w


@pytest.fixture(autouse=True)
async def recovered(target, world):
    """Each test starts on a server that answers on both hosts (a previous attack may have broken a
    stream: the gateway re-opens it within its 1 s liveness ping). Bounded by a deadline."""
    c = SimClient(target.url, target.token("legit"), reconnect=False)
    await c.connect()
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                for mtype, payload in bystander_requests(world):
                    await c.request(mtype, payload, timeout=2)
                break
            except ClientError as err:
                if not err.retryable or time.monotonic() > deadline:
                    raise
                await c.wait_connected(1)
                await asyncio.sleep(0.1)          # retry backoff while the stream is re-opened
    finally:
        await c.close()


def bystander_requests(world) -> list[tuple[str, dict]]:
    """Reads of the legitimate user's playlist on each host, its library (session) and player."""
    return [("playlist.get", {"id": world.mine[0]}), ("playlist.get", {"id": world.mine[1]}),
            ("library.contains", {"uris": [world.track]}), ("player.state", {})]


@contextlib.asynccontextmanager
async def bystander(target, world):
    """A legitimate client on the same gateway for the length of the block; afterwards: not one
    failed request, no request slower than STALL_MS, and it did make requests."""
    b = A.Bystander(target, "legit", bystander_requests(world))
    await b.start()
    start = b.mark()
    try:
        yield b
    finally:
        await b.stop()
    seen = b.window(start)
    assert not b.errors, f"the legitimate client's requests failed during the attack: {dict(b.errors)}"
    assert seen, "the legitimate client got no answer during the attack"
    assert max(seen) < STALL_MS, f"the legitimate client stalled: max {max(seen):.0f} ms over {len(seen)} requests"


async def gateway_rss_mb(server) -> float:
    pids = await asyncio.to_thread(ray_server_pids, server)
    pid = next(p for label, p in pids.items() if label.startswith("gateway"))
    return (await asyncio.to_thread(lambda: psutil.Process(pid).memory_info().rss)) / 2**20


def owner_rows(server, pids: list[str]) -> int:
    """Rows in the store's owners table (one per entity ever activated) for these playlist ids."""
    db = sqlite3.connect(f"file:{Path(server.spec.data_dir) / 'syncopate.db'}?mode=ro", uri=True)
    try:
        keys = [f"playlist:{p}" for p in pids]
        return db.execute(f"SELECT count(*) FROM owners WHERE key IN ({','.join('?' * len(keys))})",
                          keys).fetchone()[0]
    finally:
        db.close()


# -- the websocket envelope ---------------------------------------------------------------------------------
async def test_ext_type_frame_gets_malformed_frame_and_kills_nothing(target, world, http):
    # msgpack ext types are not part of the envelope (docs/protocol.md: the same schema as JSON):
    # the decoding layer refuses the frame as MALFORMED_FRAME, wherever the ext type sits
    async with bystander(target, world):
        r = await A.ext_type_frame(target, "abuser", world.yjs, http=http)
    assert r.counts["ext-as-id:code"] == "MALFORMED_FRAME", r.summary()
    assert r.counts["ext-beside-id:code"] == "MALFORMED_FRAME", r.summary()
    assert r.counts["open_after"] is True and r.closes == [], r.summary()


async def test_many_sockets_for_one_user_are_refused_past_the_budget(target, world, http):
    # a gateway holds at most max_sockets_per_user sockets of one user: the next upgrades are
    # refused with HTTP 429 before any websocket exists (docs/security.md)
    cap = CFG.max_sockets_per_user
    async with bystander(target, world):
        r = await A.many_sockets(target, "abuser-sockets", sockets=cap + 10, http=http)
    assert r.counts.get("hello") == cap, r.summary()
    assert r.errors == {"http:429": 10} and r.closes == [], r.summary()


# -- Yjs ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["type", "state_vector", "update"])
async def test_quadratic_varint_is_refused_fast(target, world, http, where):
    async with bystander(target, world):
        r = await A.varint_run(target, "abuser", world.yjs, where=where, run_bytes=VARINT_RUN, http=http)
    took = r.timings_ms["to_close_or_probe_answer"]
    assert r.counts["to_close_or_probe_answer:outcome"] != "late", r.summary()
    assert took < REFUSE_MS, f"a {VARINT_RUN}-byte 0xFF varint ({where}) held the server {took:.0f} ms"


async def test_oversize_yjs_frame_closes_1009(target, world, http):
    async with bystander(target, world):
        r = await A.yjs_oversize(target, "abuser", world.yjs, frame_bytes=CFG.max_frame_bytes + 1024, http=http)
    assert r.closes == [1009], r.summary()


async def test_yjs_frames_over_the_rate_close_4029(target, world, http):
    async with bystander(target, world):
        r = await A.yjs_rate(target, "abuser", world.yjs, frames=int(CFG.ws_burst) + 200, http=http)
    assert r.closes == [4029], r.summary()


async def test_awareness_flood_is_bounded(target, world, http):
    # 5,000 client ids x 2 KB from one socket: the socket is closed (4029, over its awareness
    # budget), and what a new editor is sent on joining stays within one frame limit
    async with bystander(target, world):
        r = await A.awareness_flood(target, "abuser", world.yjs, clients=5_000, per_frame=100, state_bytes=2_000,
                                    joiner="legit-joiner", http=http)
    assert r.closes == [4029], r.summary()
    assert r.counts["joiner_bytes"] <= CFG.max_frame_bytes, r.summary()


# -- large answers -------------------------------------------------------------------------------------------
async def test_slow_reader_is_closed_and_gateway_memory_stays_bounded(server, target, world, http):
    before = await gateway_rss_mb(server)
    async with bystander(target, world):
        # paced at 40 a second: each is admitted (a few in flight at a time) and its answer queued
        r = await A.slow_reader(target, "abuser", world.large, subscribes=100, interval_s=0.025)
        # The slow reader's answers reached the gateway once a later subscribe of the same entity is
        # answered (one mailbox on the host, one ordered stream to the gateway).
        probe = SimClient(target.url, target.token("abuser-probe"), reconnect=False)
        await probe.connect()
        try:
            await probe.call("subscribe", {"entity": f"playlist:{world.large}"}, mutate=False, timeout=30)
        finally:
            await probe.close()
        grown = await gateway_rss_mb(server) - before
    await A.finish_slow_reader(r, timeout_s=5.0)
    # 100 answers of ~1.5 MB each were queued for a socket that reads nothing
    assert grown < 64, f"the gateway grew {grown:.0f} MB for one socket that never reads"
    assert r.closes == [4008], r.summary()


async def test_subscribe_storm_is_refused_not_fatal(target, world, http):
    async with bystander(target, world):
        r = await A.subscribe_storm(target, "abuser", world.large, subscribes=200, http=http, timeout_s=30)
    assert r.counts["unanswered"] == 0, r.summary()
    assert "HOST_UNAVAILABLE" not in r.errors, f"the storm broke the host stream: {r.summary()}"
    assert r.errors.get("RATE_LIMITED", 0) > 0, f"200 full answers of a 10,000-entry playlist at once: {r.summary()}"


# -- ids that were never created ----------------------------------------------------------------------------
async def test_never_created_ids_are_not_found_and_leave_no_rows(server, target, world, http):
    n = 20
    async with bystander(target, world):
        r = await A.unknown_ids(target, "abuser", n=n, http=http)
    assert r.errors == {"ws.get:NOT_FOUND": n, "ws.subscribe:NOT_FOUND": n, "rest.get:404:NOT_FOUND": n}, r.summary()
    assert r.closes == [4403] * n, r.summary()
    rows = await asyncio.to_thread(owner_rows, server, r.ids)
    assert rows == 0, f"{rows} owners rows were created for {len(r.ids)} never-created playlist ids"


# -- HTTP ---------------------------------------------------------------------------------------------------------
async def test_overlong_request_line_gets_414_in_spotify_shape(target, world):
    async with bystander(target, world):
        r = await A.long_request_line(target, query_bytes=100_000)
    assert r.counts["status"] == 414, r.summary()
    assert (r.counts["content_type"] or "").startswith("application/json"), r.summary()
    body = orjson.loads(r.counts["body"])
    assert body["error"]["status"] == 414, body
