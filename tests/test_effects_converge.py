"""Effects between real entities converge after faults (the durable outbox, actors/host.py).

A playlist created or followed tells the user's session (the library, /me/playlists); a device
group that plays a playlist asks to follow it. Here the TARGET's writes fail for a while — the
store refuses every append for that entity kind, as a store outage on its host would — while the
source commits and answers. When the target's store is back, the derived view must show the
change, exactly once, without any client retrying anything."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from gateway.auth import write_secret
from protocols.errors import ErrorCode, SyncopateError
from storage.memory import MemoryStore
from syncopate.server import LocalServer, ServerSpec

SECRET = "effects-converge-secret-0123456789-abcdef"


class KindOutage(MemoryStore):
    """A memory store whose appends for one entity kind fail while `down_kinds` names it."""

    def __init__(self) -> None:
        super().__init__()
        self.down_kinds: set[str] = set()
        self.refused = 0

    async def append(self, batch):
        if any(a.key.partition(":")[0] in self.down_kinds for a in batch):
            self.refused += 1
            raise SyncopateError(ErrorCode.STORE_UNAVAILABLE, "outage of this kind's store (test hook)")
        return await super().append(batch)


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("effects")
    spec = ServerSpec(data_dir=str(d), port=0, hosts=2,
                      secret_file=str(write_secret(d / "key" / "secret.key", SECRET)),
                      gateway={"rest_rate": 1000, "rest_burst": 1000})
    store = KindOutage()
    srv = await LocalServer(spec, store=store).start()
    yield srv, store
    await srv.stop()


@pytest.fixture
async def env(server):
    srv, store = server
    async with aiohttp.ClientSession() as http:
        yield srv, store, http
    store.down_kinds = set()


async def call(http, srv, method, path, user, **kw):
    headers = {"Authorization": f"Bearer {srv.auth.mint(user)}"}
    async with http.request(method, f"{srv.url}/v1/{path}", headers=headers, **kw) as r:
        body = await r.read()
        return r.status, (await r.json() if body else None)


async def until(check, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        await asyncio.sleep(0.05)


async def my_playlist_ids(http, srv, user) -> list[str]:
    st, page = await call(http, srv, "GET", "me/playlists?limit=50", user)
    assert st == 200, page
    return [p["id"] for p in page["items"]]


async def test_created_and_followed_playlists_reach_the_library_after_its_store_comes_back(env, unique):
    srv, store, http = env
    owner, fan = f"{unique}o", f"{unique}f"
    # the sessions exist before the outage (their own commands write them)
    for u in (owner, fan):
        assert (await my_playlist_ids(http, srv, u)) == []
    store.down_kinds = {"session"}
    st, pl = await call(http, srv, "POST", "me/playlists", owner, json={"name": "Outage", "public": True})
    assert st == 201, pl                          # the playlist committed; its effect is waiting
    st, body = await call(http, srv, "PUT", f"playlists/{pl['id']}/followers", fan)
    assert st == 200, body
    # the effects are sent after the replies are released: wait until they were tried and refused
    assert await until(_refused(store), "an effect tried during the outage")
    assert await my_playlist_ids(http, srv, owner) == []
    store.down_kinds = set()
    assert await until(lambda: _has(http, srv, owner, pl["id"]), "the owner's /me/playlists")
    assert await until(lambda: _has(http, srv, fan, pl["id"]), "the follower's /me/playlists")
    # exactly once: re-sent effects are idempotent at the target
    assert (await my_playlist_ids(http, srv, owner)).count(pl["id"]) == 1
    assert (await my_playlist_ids(http, srv, fan)).count(pl["id"]) == 1
    st, follows = await call(http, srv, "GET", f"playlists/{pl['id']}/followers/contains?ids={fan}", fan)
    assert st == 200 and follows == [True]


async def _has(http, srv, user, pid) -> bool:
    return pid in await my_playlist_ids(http, srv, user)


def _refused(store):
    async def check() -> bool:
        return store.refused > 0
    return check
