"""Real, unmodified Yjs clients (npm `yjs` + `y-websocket`, driven by tests/node/yclient.mjs) editing
playlists through /v1/yjs/playlists/{id}, side by side with the app websocket and REST.

Covers: every surface converging on one document (and the app client's deltas reproducing the
server's order); an offline client's inserts and deletes merging on reconnect; a server restart
(LocalServer stopped and started again on the same SQLite data dir; the Ray server's hosts killed)
with clients holding their own old copy, in memory or in a file, and nothing duplicated; invalid
edits never reaching another client as valid state while the sender converges; a viewer's edits
refused while it keeps receiving; concurrent moves of one entry leaving exactly one copy; awareness
relayed; every acknowledged edit surviving a host crash.

No sleeps stand in for synchronisation: every wait is for a condition, with a deadline (in Node:
the `wait` command; here: `converge`).
"""
from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest

from tests.support.playlists import (Mirror, add, create, entry_ids, rest, start_local, stop_local,
                                     track_uris)
from tests.support.ws import WsClient
from tests.support.ynode import Y, YNode, ybase
from protocols.errors import HTTP_STATUS, ErrorCode


# What a request answers while its owner host is killed: the gateway lost the host's stream
# (HOST_UNAVAILABLE) or the request's deadline passed first (TIMEOUT), each with its own status.
OWNER_DOWN = {(HTTP_STATUS[c], c.value) for c in (ErrorCode.HOST_UNAVAILABLE, ErrorCode.TIMEOUT)}


def retryable_answer(status: int, body) -> bool:
    """A refusal of a killed owner, answered with exactly its code's HTTP status."""
    return isinstance(body, dict) and (status, body.get("error", {}).get("code")) in OWNER_DOWN


pytestmark = pytest.mark.node

# -- servers and helpers ---------------------------------------------------------------------------
# server, cat, users, http: tests/conftest.py


async def shared_playlist(http, url: str, mint, users: dict, *, public: bool = False, uris=()) -> str:
    """A playlist of the owner with an editor and a viewer (and `uris` added through REST)."""
    o = mint(users["owner"])
    pl = await create(http, url, o, name="Shared", public=public)
    pid = pl["id"]
    for who in ("editor", "viewer"):
        st, body = await rest(http, "PUT", f"{url}/v1/playlists/{pid}/collaborators/{users[who]}", o,
                              json={"role": who})
        assert st == 200, body
    if uris:
        await add(http, url, pid, o, list(uris))
    return pid


async def converge(http, url: str, pid: str, token: str, ys: list[Y], mirrors: list[Mirror] = (),
                   timeout: float = 15.0) -> list[str]:
    """Wait (with a deadline) until every Yjs replica and app mirror holds the server's order;
    returns it. The server's order is read through REST each round (edits may still be landing)."""
    deadline = time.monotonic() + timeout
    while True:
        server_ids = await entry_ids(http, url, pid, token)
        ok = True
        for y in ys:
            done, st = await y.try_wait(timeout=max(0.05, min(2.0, deadline - time.monotonic())), ids=server_ids)
            ok = ok and done
        for m in mirrors:
            m.catch_up()
            ok = ok and m.ids() == server_ids
        if ok and server_ids == await entry_ids(http, url, pid, token):
            assert len(set(server_ids)) == len(server_ids), f"duplicate entries: {server_ids}"
            return server_ids
        if time.monotonic() > deadline:
            states = {}
            for y in ys:
                st = await y.state()
                states[y.c] = {k: st[k] for k in ("ids", "connected", "synced", "pending", "last_close_code")}
            raise AssertionError(f"no convergence: server {server_ids}, yjs {states}, "
                                 f"mirrors {[m.ids() for m in mirrors]}")
        await asyncio.sleep(0.05)


async def host_ready(ray_server, i: int, timeout: float = 90.0):
    """The host's incarnation once it answers again (a killed actor is unavailable while Ray
    restarts it)."""
    import ray
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.to_thread(ray.get, ray_server.hosts[i].ready.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)                      # Ray is restarting the actor


async def until_server(http, url, pid, token, pred, timeout: float = 10.0) -> list[str]:
    """Wait until the server's entry ids satisfy `pred` (an edit sent by a Yjs client landed)."""
    deadline = time.monotonic() + timeout
    while True:
        ids = await entry_ids(http, url, pid, token)
        if pred(ids):
            return ids
        assert time.monotonic() < deadline, f"the server never reached the expected state: {ids}"
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# == (a) every surface converges ===================================================================
async def test_yjs_app_and_rest_converge_on_one_document(server, cat, http, users, ynode):
    mint = server.auth.mint
    o = mint(users["owner"])
    uris = track_uris(cat, 10, 12)
    pid = await shared_playlist(http, server.url, mint, users, uris=uris[:2])
    base = ybase(server.url)
    a = await Y(ynode, "a", users["owner"]).open(base, pid, mint(users["owner"]))
    b = await Y(ynode, "b", users["editor"]).open(base, pid, mint(users["editor"]))
    app = await WsClient(http, server.url, o).open()
    try:
        m = Mirror(app, pid)
        await m.subscribe()
        await a.wait(synced=True, length=2)
        st = await b.wait(synced=True, length=2)
        # the REST entries are Y.Maps of the documented shape
        r0 = st["tracks"][0]
        assert set(r0) == {"id", "uri", "added_by", "added_at"} and r0["uri"] == uris[0]
        assert r0["added_by"] == users["owner"] and isinstance(r0["added_at"], int)
        assert st["meta"] == {"name": "Shared", "description": "", "public": False, "collaborative": False}
        # Yjs -> everyone
        a_ids = await a.insert(a.entry(uris[2]), a.entry(uris[3]))
        await b.wait(has_ids=a_ids)
        b_ids = await b.insert(b.entry(uris[4]), index=1)
        await a.wait(has_ids=b_ids)
        # REST and the app websocket -> Yjs
        await add(http, server.url, pid, o, [uris[5]], position=0)
        await app.ok("playlist.add", {"id": pid, "uris": [uris[6]]})
        await converge(http, server.url, pid, o, [a, b], [m])
        # a Yjs move and a concurrent Yjs delete, a REST reorder, an app-websocket removal
        await a.do("move", id=a_ids[0], to=0)
        await b.do("delete", ids=[b_ids[0]])
        await until_server(http, server.url, pid, o, lambda ids: b_ids[0] not in ids)
        # (only then the reorder: a delete landing after a concurrent reorder of its entry is lost,
        # see test_a_yjs_delete_concurrent_with_a_rest_reorder_wins)
        st, _ = await rest(http, "PUT", f"{server.url}/v1/playlists/{pid}/items", o,
                           json={"range_start": 1, "insert_before": 4, "range_length": 2})
        assert st == 200
        await app.ok("playlist.remove", {"id": pid, "tracks": [{"uri": uris[6]}]})
        final = await converge(http, server.url, pid, o, [a, b], [m])
        assert len(final) == 5 and b_ids[0] not in final and a_ids[0] in final
        got = await get_json(http, f"{server.url}/v1/playlists/{pid}/items?limit=100", o)
        assert uris[6] not in [it["track"]["uri"] for it in got["items"]]
        # metadata both ways: Yjs -> REST and app; REST -> Yjs
        await b.do("set_meta", values={"name": "From Yjs"})
        await app.wait(lambda f: f.get("type") == "playlist.changed"
                       and {"op": "details", "changes": {"name": "From Yjs"}} in f["payload"]["delta"])
        st, body = await rest(http, "GET", f"{server.url}/v1/playlists/{pid}", o)
        assert body["name"] == "From Yjs"
        st, _ = await rest(http, "PUT", f"{server.url}/v1/playlists/{pid}", o, json={"description": "via REST"})
        for y in (a, b):
            await y.wait(meta={"name": "From Yjs", "description": "via REST"})
        # the app client's deltas, applied in order, reproduce the server's order
        m.catch_up()
        assert m.ids() == await entry_ids(http, server.url, pid, o)
    finally:
        await app.close()


async def get_json(http, url, token):
    st, body = await rest(http, "GET", url, token)
    assert st == 200, body
    return body


# == (b) offline edits merge ===========================================================================
async def test_offline_inserts_and_deletes_merge_on_reconnect(server, cat, http, users, ynode, tmp_path):
    mint = server.auth.mint
    o = mint(users["owner"])
    uris = track_uris(cat, 40, 12)
    pid = await shared_playlist(http, server.url, mint, users, uris=uris[:4])
    base = ybase(server.url)
    a = await Y(ynode, "a", users["owner"]).open(base, pid, mint(users["owner"]))
    b = await Y(ynode, "b", users["editor"]).open(base, pid, mint(users["editor"]))
    r = (await a.wait(synced=True, length=4))["ids"]
    await b.wait(synced=True, ids=r)
    await b.do("disconnect")
    await b.wait(connected=False)
    # offline on b: two inserts, a delete
    b_ids = await b.insert(b.entry(uris[4]), index=0)
    b_ids += await b.insert(b.entry(uris[5]))
    await b.do("delete", ids=[r[1]])
    # meanwhile online: a inserts and deletes, REST adds
    a_ids = await a.insert(a.entry(uris[6]), index=2)
    await a.do("delete", ids=[r[2]])
    await add(http, server.url, pid, o, [uris[7]])
    await a.wait(length=4 - 1 + 1 + 1)
    assert not (await b.state())["connected"]
    # a second editor client made changes offline from a copy in a file, then connects (later)
    await b.do("save", file=str(tmp_path / "b.ydoc"))
    c = await Y(ynode, "c", users["editor"]).open(base, pid, mint(users["editor"]), connect=False,
                                                   load=str(tmp_path / "b.ydoc"))
    c_ids = await c.insert(c.entry(uris[8]), index=1)
    await c.do("delete", ids=[r[3]])
    await b.do("connect")
    final = await converge(http, server.url, pid, o, [a, b])
    rest_id = [i for i in final if i not in (*r, *a_ids, *b_ids)]
    assert len(rest_id) == 1                     # the REST add
    assert sorted(final) == sorted([r[0], r[3], *a_ids, *b_ids, *rest_id])     # deletes honoured
    await c.do("connect")
    final = await converge(http, server.url, pid, o, [a, b, c])
    assert set(a_ids + b_ids + c_ids) <= set(final)
    assert not {r[1], r[2], r[3]} & set(final)
    assert len(final) == 6                       # r0, a, b x2, REST, c  (r3 deleted by c)
    assert final.index(b_ids[0]) < final.index(r[0])


# == (c) a server restart: old copies merge without duplicates ========================================
async def test_local_server_restart_with_old_copies_duplicates_nothing(cat, http, users, ynode, tmp_path,
                                                                        blockbuster):
    data, port = str(tmp_path / "data"), free_port()
    srv = await start_local(data, blockbuster, port=port)
    mint = srv.auth.mint
    o = mint(users["owner"])
    uris = track_uris(cat, 70, 12)
    base = ybase(srv.url)
    try:
        pid = await shared_playlist(http, srv.url, mint, users, uris=uris[:3])
        a = await Y(ynode, "a", users["owner"]).open(base, pid, o)
        b = await Y(ynode, "b", users["editor"]).open(base, pid, mint(users["editor"]))
        await a.wait(synced=True, length=3)
        a_ids = await a.insert(a.entry(uris[3]), a.entry(uris[4]))
        before = await converge(http, srv.url, pid, o, [a, b])
        assert len(before) == 5
        await a.do("save", file=str(tmp_path / "old.ydoc"))       # an old copy, kept by a client
    finally:
        await stop_local(srv, blockbuster)
    await a.wait(connected=False)
    # offline while the server is down: a inserts, b deletes
    a_ids += await a.insert(a.entry(uris[5]), index=0)
    await b.do("delete", ids=[before[0]])
    srv = await start_local(data, blockbuster, port=port)          # same data dir, same address
    try:
        o = srv.auth.mint(users["owner"])
        # both providers reconnect on their own and merge
        after = await converge(http, srv.url, pid, o, [a, b], timeout=20)
        assert len(after) == 5 and before[0] not in after and set(a_ids) <= set(after)
        # a client that loads the old copy (made before the restart) and connects adds nothing twice
        c = await Y(ynode, "c", users["editor"]).open(base, pid, mint(users["editor"]), load=str(tmp_path / "old.ydoc"))
        final = await converge(http, srv.url, pid, o, [a, b, c])
        assert final == after
        # the old copy's Yjs items are the server's items: one more edit from it merges cleanly
        await c.insert(c.entry(uris[6]))
        final = await converge(http, srv.url, pid, o, [a, b, c])
        assert len(final) == 6
    finally:
        await ynode.close()
        await stop_local(srv, blockbuster)


@pytest.mark.ray
async def test_ray_hosts_restarted_old_copies_duplicate_nothing(ray_server, http, unique, node_ready, tmp_path):
    from catalog import Catalog
    from gateway.auth import Auth
    cat = Catalog.generated()
    mint = Auth(ray_server.secret).mint
    users = {r: f"{unique}{r[0]}" for r in ("owner", "editor", "viewer")}
    url, o = ray_server.url, mint(users["owner"])
    base = ybase(url)
    uris = track_uris(cat, 120, 12)
    ynode = await YNode(node_ready).start()
    try:
        pid = await shared_playlist(http, url, mint, users, uris=uris[:3])
        a = await Y(ynode, "a", users["owner"]).open(base, pid, o)
        await a.wait(synced=True, length=3)
        a_ids = await a.insert(a.entry(uris[3]), a.entry(uris[4]))
        before = await converge(http, url, pid, o, [a])
        await a.do("save", file=str(tmp_path / "old.ydoc"))
        await a.do("close")
        for i in range(len(ray_server.hosts)):                   # every host restarts (same store)
            await asyncio.to_thread(ray_server.kill_host, i)
        for i in range(len(ray_server.hosts)):
            await host_ready(ray_server, i)
        # the old copy reconnects, with an offline edit made meanwhile
        b = await Y(ynode, "b", users["editor"]).open(base, pid, mint(users["editor"]), connect=False,
                                                       load=str(tmp_path / "old.ydoc"))
        b_ids = await b.insert(b.entry(uris[5]), index=1)
        await b.do("connect")
        after = await converge(http, url, pid, o, [b], timeout=30)
        assert after == before[:1] + b_ids + before[1:]
        assert set(a_ids) <= set(after)
    finally:
        await ynode.close()


# == (d) invalid edits ================================================================================
async def test_invalid_yjs_edits_never_reach_others_and_the_sender_converges(server, cat, http, users, ynode):
    mint = server.auth.mint
    o = mint(users["owner"])
    uris = track_uris(cat, 200, 6)
    pid = await shared_playlist(http, server.url, mint, users, uris=uris[:2])
    base = ybase(server.url)
    ed = await Y(ynode, "ed", users["editor"]).open(base, pid, mint(users["editor"]))
    watcher = await Y(ynode, "w", users["owner"]).open(base, pid, o)
    app = await WsClient(http, server.url, o).open()
    try:
        m = Mirror(app, pid)
        await m.subscribe()
        r = (await ed.wait(synced=True, length=2))["ids"]
        await watcher.wait(synced=True, length=2)
        meta0 = (await watcher.state())["meta"]
        bad = {
            "unknown_uri": ed.entry("spotify:track:" + "Z" * 22),
            "malformed_uri": ed.entry("spotify:track:nope"),
            "forged_added_by": ed.entry(uris[2], added_by=users["owner"]),
            "added_at_string": ed.entry(uris[2], added_at="yesterday"),
            "added_at_future": ed.entry(uris[2], added_at=int(time.time() * 1000) + 7 * 86_400_000),
            "bad_id": ed.entry(uris[2], eid="no spaces allowed!"),
            "uri_number": ed.entry(12345),
            "extra_key": {**ed.entry(uris[2]), "color": "red"},
        }
        missing = ed.entry(uris[2])
        del missing["added_at"]
        bad["missing_key"] = missing
        for e in bad.values():
            await ed.insert(e)
        await ed.do("insert_raw", items=["spotify:track:" + uris[2].rsplit(":", 1)[1], 7, {"id": "plain-object"}])
        await ed.do("insert_map_later", entry=ed.entry(uris[3], eid="filled-later"))
        await ed.do("set_entry", id=r[0], key="uri", value=uris[5])                 # entries are immutable
        await ed.do("set_entry", id=r[1], key="added_by", value=users["editor"])
        await ed.do("set_meta", values={"public": True})                            # owner only
        await ed.do("set_meta", values={"collaborative": True})
        await ed.do("set_meta", values={"name": 123})                               # wrong type
        await ed.do("set_meta", values={"name": "x" * 201})                         # too long
        await ed.do("set_meta", values={"junk": "key"})                             # unknown key
        await ed.do("delete_meta", keys=["description"])
        await ed.do("set_root", root="junk", key="k", value="v")
        # the sender converges on the valid state: every correction reached it
        st = await ed.wait(ids=r, meta=meta0, expr="Object.keys(s.meta).length === 4")
        assert st["meta"] == meta0 and st["tracks"][0]["uri"] == uris[0], st
        # then valid edits (after the corrections: a rename concurrent with a correction of the
        # name would be a genuine conflict, which Yjs settles by client id)
        good = await ed.insert(ed.entry(uris[4], eid="good-one"))
        await ed.do("set_meta", values={"name": "Valid rename"})
        final = await converge(http, server.url, pid, o, [ed, watcher], [m])
        assert final == r + good
        want_meta = {**meta0, "name": "Valid rename"}
        for y in (ed, watcher):
            st = await y.wait(meta=want_meta)
            assert st["meta"] == want_meta, st["meta"]
            assert st["tracks"][0]["uri"] == uris[0] and st["tracks"][1]["added_by"] == users["owner"]
            assert all(set(t) == {"id", "uri", "added_by", "added_at"} for t in st["tracks"])
        # the other replica never held any of it
        seen = await watcher.seen()
        bad_ids = {e["id"] for e in bad.values()} | {"filled-later", "plain-object", "$raw", "$noid"}
        assert not bad_ids & set(seen["ids"]), set(seen["ids"]) & bad_ids
        for meta in seen["metas"]:
            assert meta.get("public") is False and meta.get("collaborative") is False, meta
            assert isinstance(meta.get("name"), str) and len(meta["name"]) <= 200 and "junk" not in meta
            assert "description" in meta
        # nor did the app client or REST
        for f in app.pushes(entity=f"playlist:{pid}"):
            for op in f["payload"]["delta"]:
                for it in op.get("items", ()):
                    assert it["entry_id"] not in bad_ids
                if op["op"] == "details":
                    assert set(op["changes"]) <= {"name"} and isinstance(op["changes"]["name"], str)
        st, body = await rest(http, "GET", f"{server.url}/v1/playlists/{pid}", o)
        assert body["public"] is False and body["name"] == "Valid rename" and body["tracks"]["total"] == 3
    finally:
        await app.close()


async def test_yjs_insert_beyond_ten_thousand_entries_is_refused_whole(server, cat, http, users, ynode):
    from actors.entity import Principal
    mint = server.auth.mint
    o = mint(users["owner"])
    pid = await shared_playlist(http, server.url, mint, users)
    uris = track_uris(cat, 0, 10_000)
    for i in range(0, 9_999, 100):
        await server.gateway.ctx.call("playlist", pid, "add", {"uris": uris[i:min(i + 100, 9_999)]},
                                      principal=Principal(users["owner"]))
    ed = await Y(ynode, "ed", users["editor"]).open(ybase(server.url), pid, mint(users["editor"]))
    await ed.wait(synced=True, length=9_999, timeout=30)
    two = await ed.insert(ed.entry(uris[0]), ed.entry(uris[1]), index=0)       # 10,001: refused whole
    one = await ed.insert(ed.entry(uris[2]))                                      # 10,000: fine
    await ed.wait(length=10_000, lacks_ids=two, has_ids=one, timeout=20)
    st_, body = await rest(http, "GET", f"{server.url}/v1/playlists/{pid}", o)
    assert body["tracks"]["total"] == 10_000
    page = await get_json(http, f"{server.url}/v1/playlists/{pid}/items?offset=9999&limit=1", o)
    assert page["items"][0]["entry_id"] == one[0]


# == (e) viewers ======================================================================================
async def test_viewer_edits_are_refused_and_the_viewer_still_receives(server, cat, http, users, ynode):
    mint = server.auth.mint
    o = mint(users["owner"])
    uris = track_uris(cat, 300, 6)
    pid = await shared_playlist(http, server.url, mint, users, uris=uris[:2])
    base = ybase(server.url)
    owner = await Y(ynode, "o", users["owner"]).open(base, pid, o)
    viewer = await Y(ynode, "v", users["viewer"]).open(base, pid, mint(users["viewer"]))
    r = (await viewer.wait(synced=True, length=2))["ids"]
    await owner.wait(synced=True, length=2)
    v_ids = await viewer.insert(viewer.entry(uris[2]), index=0)
    await viewer.do("delete", ids=[r[1]])
    await viewer.do("set_meta", values={"name": "viewer was here"})
    o_ids = await owner.insert(owner.entry(uris[3]))
    st = await viewer.wait(has_ids=o_ids)                     # the viewer keeps receiving
    # its own edits stay local (until it reloads); nobody else ever holds them
    assert v_ids[0] in st["ids"] and r[1] not in st["ids"]
    await viewer.do("disconnect")
    await viewer.do("connect")                                # a reconnect re-sends them: dropped again
    await viewer.wait(synced=True)
    o_ids += await owner.insert(owner.entry(uris[4]))
    await viewer.wait(has_ids=o_ids)
    server_ids = await entry_ids(http, server.url, pid, o)
    assert server_ids == r + o_ids
    assert (await owner.wait(ids=server_ids))["meta"]["name"] == "Shared"
    assert not set(v_ids) & set((await owner.seen())["ids"])
    st_, body = await rest(http, "GET", f"{server.url}/v1/playlists/{pid}", o)
    assert body["name"] == "Shared"
    # a reload (a fresh document) converges on the server's state
    fresh = await Y(ynode, "v2", users["viewer"]).open(base, pid, mint(users["viewer"]))
    await fresh.wait(synced=True, ids=server_ids)
    # a stranger can't open a private playlist at all: refused (4403), no reconnect loop
    s = await Y(ynode, "s", users["stranger"]).open(base, pid, mint(users["stranger"]))
    st = await s.wait(expr="s.closed_code === 4403")
    assert st["tracks"] == [] and not st["synced"]


# == (f) concurrent moves ============================================================================
async def test_concurrent_moves_of_one_entry_leave_exactly_one_copy(server, cat, http, users, ynode):
    mint = server.auth.mint
    o = mint(users["owner"])
    uris = track_uris(cat, 400, 8)
    pid = await shared_playlist(http, server.url, mint, users, uris=uris[:6])
    base = ybase(server.url)
    a = await Y(ynode, "a", users["owner"]).open(base, pid, o)
    b = await Y(ynode, "b", users["editor"]).open(base, pid, mint(users["editor"]))
    app = await WsClient(http, server.url, o).open()
    try:
        m = Mirror(app, pid)
        await m.subscribe()
        r = (await a.wait(synced=True, length=6))["ids"]
        await b.wait(synced=True, ids=r)
        # 1. both offline, both move r1 (to different places), reconnect
        for y in (a, b):
            await y.do("disconnect")
        await a.do("move", id=r[1], to=4)
        await b.do("move", id=r[1], to=0)
        for y in (a, b):
            await y.do("connect")
        final = await converge(http, server.url, pid, o, [a, b], [m])
        assert sorted(final) == sorted(r) and final.count(r[1]) == 1
        # 2. online, in flight at the same time: both move r2, and r3 twice each
        await asyncio.gather(a.do("move", id=r[2], to=0), b.do("move", id=r[2], to=5),
                             a.do("move", id=r[3], to=1), b.do("move", id=r[3], to=4))
        final = await converge(http, server.url, pid, o, [a, b], [m])
        assert sorted(final) == sorted(r)
        # 3. a move concurrent with a delete of the same entry, the delete arriving first: it wins
        await move_against_delete(http, server.url, pid, o, a, b, m, r[4], delete_first=True)
        # every entry kept its content through the moves
        st = await a.state()
        by_id = {t["id"]: t for t in st["tracks"]}
        assert [by_id[i]["uri"] for i in r if i != r[4]] == [u for i, u in enumerate(uris[:6]) if i != 4]
        assert all(t["added_by"] == users["owner"] for t in st["tracks"])
    finally:
        await app.close()


async def move_against_delete(http, url, pid, token, mover: Y, deleter: Y, m: Mirror, eid: str, *,
                              delete_first: bool) -> list[str]:
    """Both offline; `mover` moves `eid` to the front, `deleter` deletes it; they reconnect one at
    a time (the second once the server has integrated the first). The delete must win."""
    start = await entry_ids(http, url, pid, token)
    for y in (mover, deleter):
        await y.do("disconnect")
        await y.wait(connected=False)
    await mover.do("move", id=eid, to=0)
    await deleter.do("delete", ids=[eid])
    first, second = (deleter, mover) if delete_first else (mover, deleter)
    await first.do("connect")
    await first.wait(synced=True)
    await until_server(http, url, pid, token, lambda ids: ids != start)     # the first one's edit landed
    await second.do("connect")
    final = await converge(http, url, pid, token, [mover, deleter], [m])
    assert sorted(final) == sorted(x for x in start if x != eid), (eid, final)
    return final


async def test_a_delete_arriving_after_a_concurrent_move_still_wins(server, cat, http, users, ynode):
    mint = server.auth.mint
    o = mint(users["owner"])
    pid = await shared_playlist(http, server.url, mint, users, uris=track_uris(cat, 450, 4))
    base = ybase(server.url)
    a = await Y(ynode, "a", users["owner"]).open(base, pid, o)
    b = await Y(ynode, "b", users["editor"]).open(base, pid, mint(users["editor"]))
    app = await WsClient(http, server.url, o).open()
    try:
        m = Mirror(app, pid)
        await m.subscribe()
        r = (await a.wait(synced=True, length=4))["ids"]
        await b.wait(synced=True, ids=r)
        await move_against_delete(http, server.url, pid, o, a, b, m, r[2], delete_first=False)
    finally:
        await app.close()


async def test_a_yjs_delete_concurrent_with_a_rest_reorder_wins(server, cat, http, users, ynode):
    mint = server.auth.mint
    o = mint(users["owner"])
    pid = await shared_playlist(http, server.url, mint, users, uris=track_uris(cat, 470, 4))
    b = await Y(ynode, "b", users["editor"]).open(ybase(server.url), pid, mint(users["editor"]))
    r = (await b.wait(synced=True, length=4))["ids"]
    await b.do("disconnect")
    await b.wait(connected=False)
    await b.do("delete", ids=[r[1]])
    st, _ = await rest(http, "PUT", f"{server.url}/v1/playlists/{pid}/items", o,
                       json={"range_start": 1, "insert_before": 4})              # moves r1 to the end
    assert st == 200
    await b.do("connect")
    final = await converge(http, server.url, pid, o, [b])
    assert final == [r[0], r[2], r[3]], final


# == (g) awareness ===================================================================================
async def test_awareness_is_relayed(server, cat, http, users, ynode):
    mint = server.auth.mint
    pid = await shared_playlist(http, server.url, mint, users, public=True)
    base = ybase(server.url)
    a = await Y(ynode, "a", users["owner"]).open(base, pid, mint(users["owner"]))
    b = await Y(ynode, "b", users["editor"]).open(base, pid, mint(users["editor"]))
    await a.wait(synced=True)
    await b.wait(synced=True)
    await a.do("awareness", state={"user": {"name": "alice", "color": "#f00"}, "cursor": 3})
    await b.wait(peer_state={"user": {"name": "alice"}, "cursor": 3})
    await b.do("awareness", state={"user": {"name": "bob"}})
    await a.wait(peer_state={"user": {"name": "bob"}})
    await a.do("awareness", state={"user": {"name": "alice", "color": "#f00"}, "cursor": 7})
    await b.wait(peer_state={"cursor": 7})
    # a viewer and a late joiner see who is here
    v = await Y(ynode, "v", users["viewer"]).open(base, pid, mint(users["viewer"]))
    await v.wait(synced=True)
    await v.wait(peer_state={"user": {"name": "alice"}, "cursor": 7})
    await v.wait(peer_state={"user": {"name": "bob"}})
    await v.do("awareness", state={"user": {"name": "viewer"}})
    await a.wait(peer_state={"user": {"name": "viewer"}})
    # leaving is relayed too
    await a.do("close")
    await b.wait(no_peer_state={"user": {"name": "alice"}})
    await v.wait(no_peer_state={"user": {"name": "alice"}})


async def test_yjs_client_resyncs_after_a_host_crash_in_process(cat, http, users, ynode, tmp_path, blockbuster):
    """The same on the in-process server (LocalCluster.restart_host: the host's memory is dropped,
    a fresh one takes its slot): the Yjs client's updates in flight are not lost for good and the
    pushes it missed reach it, because the gateway makes it sync again."""
    from actors.placement import owner as owner_of
    srv = await start_local(str(tmp_path / "data"), blockbuster)
    try:
        mint = srv.auth.mint
        o = mint(users["owner"])
        uris = track_uris(cat, 800, 30)
        pid = await shared_playlist(http, srv.url, mint, users)
        victim = owner_of(f"playlist:{pid}", srv.cluster.n_hosts)
        y = await Y(ynode, "y", users["editor"]).open(ybase(srv.url), pid, mint(users["editor"]))
        await y.wait(synced=True)
        app = await WsClient(http, srv.url, o).open()
        m = Mirror(app, pid)
        await m.subscribe()
        y_ids = []
        for i in range(12):
            y_ids += await y.insert(y.entry(uris[i]))
            await add(http, srv.url, pid, o, [uris[12 + i]])
            if i in (3, 7):
                srv.cluster.restart_host(victim)
        final = await converge(http, srv.url, pid, o, [y], [m], timeout=30)
        assert set(y_ids) <= set(final) and len(final) == 24
        await app.close()
    finally:
        await ynode.close()
        await stop_local(srv, blockbuster)


# == (h) a host crash mid-stream ======================================================================
@pytest.mark.ray
async def test_every_acknowledged_edit_survives_a_host_crash(ray_server, http, unique, node_ready):
    """A Yjs client and REST keep adding; the host owning the playlist is killed mid-stream. A Yjs
    edit counts as acknowledged once the app subscriber got it in a push (pushes follow the
    durable commit); a REST add once it answered 201 (retried with its Idempotency-Key). Every
    acknowledged edit is there at the end, and every replica converges."""
    from actors.placement import owner as owner_of
    from catalog import Catalog
    from gateway.auth import Auth
    cat = Catalog.generated()
    mint = Auth(ray_server.secret).mint
    users = {r: f"{unique}{r[0]}" for r in ("owner", "editor", "viewer")}
    url, o = ray_server.url, mint(users["owner"])
    uris = track_uris(cat, 600, 40)
    ynode = await YNode(node_ready).start()
    app = await WsClient(http, url, o).open()
    try:
        pid = await shared_playlist(http, url, mint, users)
        victim = owner_of(f"playlist:{pid}", len(ray_server.hosts))
        y = await Y(ynode, "y", users["editor"]).open(ybase(url), pid, mint(users["editor"]))
        await y.wait(synced=True)
        m = Mirror(app, pid)
        await m.subscribe()
        acked_rest: list[str] = []
        y_ids: list[str] = []
        before = await host_ready(ray_server, victim)

        async def rest_add(i: int) -> None:
            key = f"{unique}-add-{i}"
            deadline = time.monotonic() + 90
            while True:
                assert time.monotonic() < deadline, f"REST add {i} never acknowledged"
                try:
                    r = await http.post(f"{url}/v1/playlists/{pid}/items", json={"uris": [uris[i]]},
                                        headers={"Authorization": f"Bearer {o}", "Idempotency-Key": key})
                    body = await r.json()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    body, r = None, None
                if r is not None and r.status == 201:
                    acked_rest.append(body["snapshot_id"])
                    return
                # the owner is down: a retryable refusal, with the HTTP status of its code (which of
                # them depends on where the kill caught the request), then the retry succeeds
                assert r is None or retryable_answer(r.status, body), body
                await asyncio.sleep(0.1)                         # retry backoff, not synchronisation

        for i in range(20):
            y_ids += await y.insert(y.entry(uris[20 + i]))
            await rest_add(i)
            if i == 7:
                await asyncio.to_thread(ray_server.kill_host, victim)
        after = await host_ready(ray_server, victim)
        assert after != before, "the host was not restarted"
        assert len(acked_rest) == 20
        # the Yjs entries the app subscriber saw are acknowledged; all must be there at the end
        m.catch_up()
        acked_y = [i for i in y_ids if i in m.ids()]
        final = await converge(http, url, pid, o, [y], [m], timeout=40)
        final_uris = [it["uri"] for it in (await ray_items(http, url, pid, o))]
        assert set(acked_y) <= set(final)
        assert set(uris[:20]) <= set(final_uris) and len(final_uris) == len(set(final_uris))
        # the Yjs client's own edits are not lost either: it converged with the server
        assert set(y_ids) <= set(final), sorted(set(y_ids) - set(final))
    finally:
        await app.close()
        await ynode.close()


async def ray_items(http, url, pid, token):
    out, page_url = [], f"{url}/v1/playlists/{pid}/items?limit=100"
    while page_url:
        st, page = await rest(http, "GET", page_url, token)
        assert st == 200, page
        out += [{"entry_id": it["entry_id"], "uri": it["track"]["uri"]} for it in page["items"]]
        page_url = page["next"]
    return out


# == (i) a move made offline, concurrent with another move (or a delete) of the same entry =========
async def offline_move_against(http, url, pid, token, online: list[Y], offline: Y, eid: str, to_online: int,
                               to_offline: int) -> list[str]:
    """Every client synced; `offline` disconnects; the first of `online` moves `eid` to
    `to_online` and the server takes it; `offline` moves `eid` to `to_offline`, then reconnects
    (its move reaches the server in its SyncStep2, with its whole delete set). Returns the
    converged order (converge: every replica and REST hold it, no duplicate)."""
    start = await entry_ids(http, url, pid, token)
    for y in (*online, offline):
        await y.wait(synced=True, ids=start)
    await offline.do("disconnect")
    await offline.wait(connected=False)
    await online[0].do("move", id=eid, to=to_online)
    moved = await until_server(http, url, pid, token, lambda ids: ids != start)
    for y in online:
        await y.wait(ids=moved)
    await offline.do("move", id=eid, to=to_offline)
    await offline.do("connect")
    await offline.wait(synced=True)
    return await converge(http, url, pid, token, [*online, offline])


@pytest.mark.parametrize("offline_wins", [True, False], ids=["offline-copy-wins", "online-copy-wins"])
async def test_an_offline_move_concurrent_with_a_move_keeps_exactly_one_copy(server, cat, http, users, ynode,
                                                                             offline_wins):
    """The offline client's SyncStep2 deletes the moved-away item too; that is its own move, not a
    delete: one copy survives, the one whose Yjs item id is greatest (the docs' rule), i.e. the copy
    of the client with the greater client id (both copies are items of their writer)."""
    mint = server.auth.mint
    o = mint(users["owner"])
    pid = await shared_playlist(http, server.url, mint, users, uris=track_uris(cat, 900, 5))
    base = ybase(server.url)
    a = await Y(ynode, "a", users["owner"]).open(base, pid, o)
    b = await Y(ynode, "b", users["editor"]).open(base, pid, mint(users["editor"]))
    r = (await a.wait(synced=True, length=5))["ids"]
    ids = {y: (await y.wait(synced=True, ids=r))["client_id"] for y in (a, b)}
    hi, lo = (a, b) if ids[a] > ids[b] else (b, a)
    offline, online = (hi, lo) if offline_wins else (lo, hi)
    final = await offline_move_against(http, server.url, pid, o, [online], offline, r[2], to_online=0,
                                       to_offline=4)
    assert sorted(final) == sorted(r) and final.count(r[2]) == 1, final
    # the winner's copy is where its move put it
    assert final.index(r[2]) == (4 if offline_wins else 0), (final, ids)
    got = await get_json(http, f"{server.url}/v1/playlists/{pid}/items?limit=100", o)
    assert [it["entry_id"] for it in got["items"]] == final


async def test_an_offline_move_concurrent_with_moves_of_three_clients_keeps_one_copy(server, cat, http, users,
                                                                                      ynode):
    mint = server.auth.mint
    o = mint(users["owner"])
    pid = await shared_playlist(http, server.url, mint, users, uris=track_uris(cat, 920, 6))
    base = ybase(server.url)
    a = await Y(ynode, "a", users["owner"]).open(base, pid, o)
    b = await Y(ynode, "b", users["editor"]).open(base, pid, mint(users["editor"]))
    c = await Y(ynode, "c", users["editor"]).open(base, pid, mint(users["editor"]))
    r = (await a.wait(synced=True, length=6))["ids"]
    # c offline; a moves r1; b moves it again (having seen a's move); c moves it offline
    start = r
    await c.wait(synced=True, ids=start)
    await c.do("disconnect")
    await c.wait(connected=False)
    await a.do("move", id=r[1], to=5)
    after_a = await until_server(http, server.url, pid, o, lambda ids: ids != start)
    await b.wait(ids=after_a)
    await b.do("move", id=r[1], to=0)
    after_b = await until_server(http, server.url, pid, o, lambda ids: ids != after_a)
    await a.wait(ids=after_b)
    await c.do("move", id=r[1], to=3)
    await c.do("connect")
    await c.wait(synced=True)
    final = await converge(http, server.url, pid, o, [a, b, c])
    assert sorted(final) == sorted(r) and final.count(r[1]) == 1, final
    # and a second offline round, with the roles turned: b offline against a and c
    await b.do("disconnect")
    await b.wait(connected=False)
    await c.do("move", id=r[4], to=0)
    moved = await until_server(http, server.url, pid, o, lambda ids: ids != final)
    await a.wait(ids=moved)
    await b.do("move", id=r[4], to=5)
    await b.do("connect")
    await b.wait(synced=True)
    final = await converge(http, server.url, pid, o, [a, b, c])
    assert sorted(final) == sorted(r) and final.count(r[4]) == 1, final


async def test_a_rest_delete_concurrent_with_an_offline_move_wins(server, cat, http, users, ynode):
    mint = server.auth.mint
    o = mint(users["owner"])
    pid = await shared_playlist(http, server.url, mint, users, uris=track_uris(cat, 940, 4))
    b = await Y(ynode, "b", users["editor"]).open(ybase(server.url), pid, mint(users["editor"]))
    r = (await b.wait(synced=True, length=4))["ids"]
    await b.do("disconnect")
    await b.wait(connected=False)
    page = await get_json(http, f"{server.url}/v1/playlists/{pid}/items?limit=100", o)
    uri = page["items"][1]["track"]["uri"]
    st, _ = await rest(http, "DELETE", f"{server.url}/v1/playlists/{pid}/items", o,
                       json={"tracks": [{"uri": uri, "positions": [1]}]})
    assert st == 200
    await b.do("move", id=r[1], to=3)
    await b.do("connect")
    await b.wait(synced=True)
    final = await converge(http, server.url, pid, o, [b])
    assert final == [r[0], r[2], r[3]], final


@pytest.mark.parametrize("first", ["loser", "winner"])
async def test_offline_moves_arriving_merged_then_their_movers_reconnect_keep_one_copy(server, cat, http, users,
                                                                                       ynode, first):
    """Two offline moves of one entry reach the server merged into ONE update: the SyncStep2 of a
    third client whose document holds both (restored from a copy persisted while both edited, as
    y-indexeddb keeps one per browser). Then the movers reconnect, having received nothing: each
    SyncStep2's delete set shows the original deleted, and the loser's author holds only its own
    copy. Its move is still a move: exactly one copy, the winner's (the greatest item id)."""
    import base64
    from pycrdt import merge_updates
    mint = server.auth.mint
    o = mint(users["owner"])
    pid = await shared_playlist(http, server.url, mint, users, uris=track_uris(cat, 960, 5))
    base = ybase(server.url)
    a = await Y(ynode, "a", users["owner"]).open(base, pid, o)
    b = await Y(ynode, "b", users["editor"]).open(base, pid, mint(users["editor"]))
    r = (await a.wait(synced=True, length=5))["ids"]
    ids = {y: (await y.wait(synced=True, ids=r))["client_id"] for y in (a, b)}
    for y in (a, b):
        await y.do("disconnect")
        await y.wait(connected=False)
    await a.do("move", id=r[2], to=0)
    await b.do("move", id=r[2], to=4)
    saved = [base64.b64decode((await y.do("save"))["update_b64"]) for y in (a, b)]
    c = await Y(ynode, "c", users["editor"]).open(base, pid, mint(users["editor"]),
                                                   load_b64=base64.b64encode(merge_updates(*saved)).decode())
    await c.wait(synced=True)
    await until_server(http, server.url, pid, o, lambda got: got != r)
    winner, loser = (a, b) if ids[a] > ids[b] else (b, a)
    for y in ((loser, winner) if first == "loser" else (winner, loser)):
        await y.do("connect")
        await y.wait(synced=True)
    final = await converge(http, server.url, pid, o, [a, b, c])
    assert sorted(final) == sorted(r) and final.count(r[2]) == 1, final
    assert final.index(r[2]) == (0 if winner is a else 4), (final, ids)
