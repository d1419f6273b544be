"""Live authorization over the real server: a change of access reaches sockets that are already
open, app websockets and unmodified Node Yjs clients alike, and nothing leaks after it.

Each test: open the sockets, change access through REST as the owner, wait (with a deadline) for
the documented notice, then make further changes and check over a quiet window that none of them
reaches the socket that lost access. Tokens that expire on an open socket are covered too."""
from __future__ import annotations

import asyncio
import time


from tests.support.playlists import add, create, entry_ids, rest, track_uris
from tests.support.ws import WsClient
from tests.support.ynode import Y, ybase

QUIET_S = 0.5            # after the notice, nothing of the playlist may arrive for this long


# server, cat, users, http: tests/conftest.py


async def collaborator(http, url, pid, owner_token, user, role):
    st, body = await rest(http, "PUT", f"{url}/v1/playlists/{pid}/collaborators/{user}", owner_token,
                          json={"role": role})
    assert st == 200, body


async def quiet(client: WsClient, key: str, since: int) -> None:
    """Nothing about `key` reaches the client for QUIET_S (a timed window is the assertion here: the
    absence of a push can only be observed over time)."""
    end = time.monotonic() + QUIET_S
    while time.monotonic() < end:
        leaked = [f for f in client.frames[since:] if f.get("entity") == key and f.get("type") != "subscription.ended"]
        assert leaked == [], leaked
        client.changed.clear()
        try:
            await asyncio.wait_for(client.changed.wait(), max(0.0, end - time.monotonic()))
        except asyncio.TimeoutError:
            pass
    leaked = [f for f in client.frames[since:] if f.get("entity") == key and f.get("type") != "subscription.ended"]
    assert leaked == [], leaked


async def test_removed_collaborator_stops_receiving_at_once(server, cat, http, users):
    mint, url = server.auth.mint, server.url
    o = mint(users["owner"])
    pid = (await create(http, url, o, name="Private", public=False))["id"]
    await collaborator(http, url, pid, o, users["editor"], "editor")
    key = f"playlist:{pid}"
    ed = await WsClient(http, url, mint(users["editor"])).open()
    try:
        await ed.ok("subscribe", {"entity": key})
        uris = track_uris(cat, 10, 3)
        await add(http, url, pid, o, uris[:1])
        await ed.wait(lambda f: f.get("type") == "playlist.changed" and f.get("entity") == key)
        mark = ed.mark()
        t0 = time.monotonic()
        st, _ = await rest(http, "DELETE", f"{url}/v1/playlists/{pid}/collaborators/{users['editor']}", o)
        assert st == 200
        ended = await ed.wait(lambda f: f.get("type") == "subscription.ended", since=mark, timeout=1.0)
        assert time.monotonic() - t0 < 1.0
        assert ended["entity"] == key and ended["error"]["code"] == "FORBIDDEN"
        after = ed.mark()
        await add(http, url, pid, o, uris[1:])
        await quiet(ed, key, after)
        # and a new subscribe is refused
        res = await ed.request("subscribe", {"entity": key})
        assert res["type"] == "error" and res["error"]["code"] == "NOT_FOUND"
    finally:
        await ed.close()


async def test_playlist_made_private_ends_strangers_subscriptions(server, cat, http, users):
    mint, url = server.auth.mint, server.url
    o = mint(users["owner"])
    pid = (await create(http, url, o, name="Open", public=True))["id"]
    await collaborator(http, url, pid, o, users["viewer"], "viewer")
    key = f"playlist:{pid}"
    stranger = await WsClient(http, url, mint(users["stranger"])).open()
    viewer = await WsClient(http, url, mint(users["viewer"])).open()
    try:
        await stranger.ok("subscribe", {"entity": key})
        await viewer.ok("subscribe", {"entity": key})
        mark = stranger.mark()
        st, body = await rest(http, "PUT", f"{url}/v1/playlists/{pid}", o, json={"public": False})
        assert st == 200, body
        ended = await stranger.wait(lambda f: f.get("type") == "subscription.ended", since=mark, timeout=1.0)
        assert ended["entity"] == key
        after = stranger.mark()
        vmark = viewer.mark()
        await add(http, url, pid, o, track_uris(cat, 20, 1))
        # the viewer, still allowed, keeps receiving; the stranger gets nothing
        await viewer.wait(lambda f: f.get("type") == "playlist.changed" and f.get("entity") == key, since=vmark)
        await quiet(stranger, key, after)
        assert [f for f in viewer.frames if f.get("type") == "subscription.ended"] == []
    finally:
        await stranger.close()
        await viewer.close()


async def test_yjs_sockets_follow_access_changes_without_reconnecting(server, cat, http, users, ynode):
    mint, url = server.auth.mint, server.url
    o = mint(users["owner"])
    uris = track_uris(cat, 40, 6)
    pid = (await create(http, url, o, name="Yjs access", public=False))["id"]
    await collaborator(http, url, pid, o, users["editor"], "editor")
    await collaborator(http, url, pid, o, users["viewer"], "viewer")
    await add(http, url, pid, o, uris[:1])
    base = ybase(url)
    ed = await Y(ynode, "e", users["editor"]).open(base, pid, mint(users["editor"]))
    vw = await Y(ynode, "v", users["viewer"]).open(base, pid, mint(users["viewer"]))
    for y in (ed, vw):
        await y.wait(synced=True, length=1)
    # promote the viewer, demote the editor: no reconnect on either socket
    await collaborator(http, url, pid, o, users["viewer"], "editor")
    await collaborator(http, url, pid, o, users["editor"], "viewer")
    promoted = await vw.insert(vw.entry(uris[1]))

    async def server_has(ids):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if set(ids) <= set(await entry_ids(http, url, pid, o)):
                return True
            await asyncio.sleep(0.05)
        return False

    assert await server_has(promoted), "a promoted viewer's edit did not reach the server"
    demoted = await ed.insert(ed.entry(uris[2]))
    marker = await vw.insert(vw.entry(uris[3]))              # sent after the demoted editor's edit
    assert await server_has(marker)
    assert demoted[0] not in await entry_ids(http, url, pid, o)
    st_e, st_v = await ed.state(), await vw.state()
    assert st_e["last_close_code"] is None and st_v["last_close_code"] is None   # neither reconnected
    # withdraw the (former) editor's access altogether: its socket is closed for good (4403)
    st, _ = await rest(http, "DELETE", f"{url}/v1/playlists/{pid}/collaborators/{users['editor']}", o)
    assert st == 200
    await ed.wait(expr="s.closed_code === 4403", timeout=2.0)
    late = await add(http, url, pid, o, uris[4:5])
    ids = await entry_ids(http, url, pid, o)
    st_e = await ed.state()
    assert ids[-1] not in st_e["ids"] and not st_e["connected"]   # closed for good: no reconnect
    assert late


async def test_an_expired_token_closes_the_socket_and_a_renewed_one_keeps_it(server, http, users):
    mint, url = server.auth.mint, server.url
    short = await WsClient(http, url, mint(users["owner"], ttl_s=2)).open()
    renewed = await WsClient(http, url, mint(users["editor"], ttl_s=2)).open()
    res = await renewed.ok("auth", {"token": mint(users["editor"], ttl_s=60, product="free")})
    assert res["payload"]["product"] == "free"
    # a token of another user can't take over a socket
    res = await renewed.request("auth", {"token": mint(users["viewer"])})
    assert res["type"] == "error" and res["error"]["code"] == "FORBIDDEN"
    note = await short.wait(lambda f: f.get("type") == "auth.expired", timeout=6.0)
    assert note["error"]["code"] == "TOKEN_EXPIRED"
    await asyncio.wait_for(short.closed.wait(), 2.0)
    assert short.close_code == 4401
    # the renewed socket outlives its first token's expiry and still answers
    pong = await renewed.ok("session.list")
    assert pong["type"] == "result"
    assert not renewed.closed.is_set()
    await renewed.close()


async def test_a_yjs_token_without_a_playlist_modify_scope_reads_but_does_not_edit(server, cat, http, users, ynode):
    mint, url = server.auth.mint, server.url
    o = mint(users["owner"])
    uris = track_uris(cat, 60, 3)
    pid = (await create(http, url, o, name="Scoped", public=False))["id"]
    await add(http, url, pid, o, uris[:1])
    base = ybase(url)
    narrow = mint(users["owner"], scope=frozenset({"playlist-read-private"}))
    y = await Y(ynode, "n", users["owner"]).open(base, pid, narrow)
    full = await Y(ynode, "f", users["owner"]).open(base, pid, o)
    await y.wait(synced=True, length=1)
    refused = await y.insert(y.entry(uris[1]))                 # the owner's role, but not the token's scope
    marker = await full.insert(full.entry(uris[2]))            # sent after it, on a full token
    await y.wait(has_ids=marker)                               # it still reads, live
    ids = await entry_ids(http, url, pid, o)
    assert marker[0] in ids and refused[0] not in ids


async def test_a_downgrade_reaches_the_open_socket_at_once(server, http, users):
    """A premium user downgraded to free (the account's product changed by an operator) loses
    playback control on the socket opened with a premium token, within the second, without a new
    token: the account tells the session, the session tells every gateway, the gateway changes the
    socket's principal."""
    from actors.entity import SYSTEM
    uid = users["owner"]
    ctx = server.gateway.ctx
    await ctx.call("account", uid, "create", {"display_name": "Down", "product": "premium"}, principal=SYSTEM)
    ws = await WsClient(http, server.url, server.auth.mint(uid, product="premium")).open()
    try:
        res = await ws.request("player.pause", {})
        assert res["type"] == "error" and res["error"]["code"] == "NO_ACTIVE_DEVICE", res   # premium: allowed
        mark = ws.mark()
        t0 = time.monotonic()
        await ctx.call("account", uid, "update", {"product": "free"}, principal=SYSTEM)
        note = await ws.wait(lambda f: f.get("type") == "session.changed"
                             and (f.get("payload") or {}).get("reason") == "product", since=mark, timeout=1.0)
        assert note["payload"]["product"] == "free" and time.monotonic() - t0 < 1.0
        res = await ws.request("player.pause", {})
        assert res["type"] == "error" and res["error"]["code"] == "PREMIUM_REQUIRED", res
    finally:
        await ws.close()
