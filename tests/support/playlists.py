"""Playlist helpers shared by the integration tests: REST with a real client's retries, an app
client's replica of a playlist (Mirror: subscribe answer + every push's delta), create/add, the
in-process server's spec, and starting/stopping one inside a test."""
from __future__ import annotations

import asyncio
import time
import uuid
import warnings

import aiohttp
import orjson

from syncopate.server import LocalServer, ServerSpec
from tests.support.ws import WsClient

UNKNOWN_TRACK = "spotify:track:" + "Z" * 22          # well-formed, not in the generated catalog


def strict_tekore(fn, *args, **kwargs):
    """Call tekore with its model warnings recorded: the only attribute its models may not know
    is our `entry_id` extension on playlist items."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    unknown = [str(w.message) for w in caught if w.category.__name__ == "UnknownModelAttributeWarning"]
    assert all("entry_id" in m for m in unknown), unknown
    return out


async def rest(http: aiohttp.ClientSession, method: str, url: str, token: str, *, retry_s: float = 30.0, **kw):
    """One REST call; (status, JSON body). Like a real client, it retries the transient answers
    (503 HOST_UNAVAILABLE / STORE_UNAVAILABLE, 504 TIMEOUT: a host restarting) with the same
    Idempotency-Key, so a retried mutation is applied once."""
    headers = {"Authorization": f"Bearer {token}"}
    if method != "GET":
        headers["Idempotency-Key"] = uuid.uuid4().hex
    deadline = time.monotonic() + retry_s
    while True:
        r = await http.request(method, url, headers=headers, **kw)
        body = await r.read()
        if r.status not in (503, 504) or time.monotonic() > deadline:
            return r.status, (orjson.loads(body) if body else None)
        await asyncio.sleep(0.1)                  # retry backoff, not synchronisation


async def eventually(check, timeout: float = 5.0, what: str = "condition"):
    """Poll an asynchronous effect with a deadline (the check is a coroutine function)."""
    deadline = time.monotonic() + timeout
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        await asyncio.sleep(0.02)


def apply_delta(items: list[dict], delta: list[dict]) -> list[dict]:
    """Apply a playlist.changed delta (docs/playlist-document.md) to a list of entry rows, checking
    that every delete names exactly the entries at its index."""
    for op in delta:
        if op["op"] == "delete":
            i, ids = op["index"], op["entry_ids"]
            assert [x["entry_id"] for x in items[i:i + len(ids)]] == ids, (op, [x["entry_id"] for x in items])
            del items[i:i + len(ids)]
        elif op["op"] == "insert":
            assert 0 <= op["index"] <= len(items), op
            items[op["index"]:op["index"]] = op["items"]
    return items


class Mirror:
    """An app client's replica of one playlist: the subscribe answer, then every push's delta."""

    def __init__(self, client: WsClient, pid: str) -> None:
        self.client, self.pid, self.key = client, pid, f"playlist:{pid}"
        self.items: list[dict] = []
        self.version = -1
        self.snapshot_id = None
        self.at = 0             # frames consumed

    async def subscribe(self, since: int | None = None) -> dict:
        payload = {"entity": self.key} if since is None else {"entity": self.key, "since": since}
        res = await self.client.ok("subscribe", payload)
        body = res["payload"]
        self._answer(body, res["version"])
        self.at = self.client.frames.index(res) + 1
        return body

    def _answer(self, body: dict, version: int) -> None:
        """A subscribe answer (or a `resync` push after a host restart): full state or deltas."""
        if body["mode"] == "full":
            self.items = list(body["items"])
        else:
            for d in body["deltas"]:
                if d["version"] > self.version:
                    apply_delta(self.items, d["delta"])
        self.version, self.snapshot_id = version, body["snapshot_id"]

    def catch_up(self) -> None:
        for f in self.client.frames[self.at:]:
            if f.get("entity") != self.key:
                continue
            if f.get("type") == "playlist.changed":
                assert f["version"] > self.version, "pushes out of order"
                apply_delta(self.items, f["payload"]["delta"])
                self.version, self.snapshot_id = f["version"], f["payload"]["snapshot_id"]
            elif f.get("type") == "resync":
                self._answer(f["payload"], f["version"])
        self.at = len(self.client.frames)

    async def until_version(self, version: int, timeout: float = 10.0) -> None:
        await self.client.wait(lambda f: f.get("type") == "playlist.changed" and f.get("entity") == self.key
                               and f["version"] >= version, since=self.at, timeout=timeout)
        self.catch_up()

    async def until(self, pred, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.catch_up()
            if pred(self):
                return
            left = deadline - time.monotonic()
            assert left > 0, f"mirror of {self.pid} never reached the expected state: {self.ids()}"
            self.client.changed.clear()
            try:
                await asyncio.wait_for(self.client.changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    def ids(self) -> list[str]:
        return [x["entry_id"] for x in self.items]


async def all_items(http, url: str, pid: str, token: str) -> list[dict]:
    """Every item of a playlist through REST, following the absolute `next` URLs."""
    out, page_url = [], f"{url}/v1/playlists/{pid}/items?limit=100"
    while page_url:
        status, page = await rest(http, "GET", page_url, token)
        assert status == 200, page
        out += page["items"]
        page_url = page["next"]
    return out


async def entry_ids(http, url: str, pid: str, token: str) -> list[str]:
    return [it["entry_id"] for it in await all_items(http, url, pid, token)]


async def item_uris(http, url: str, pid: str, token: str) -> list[str]:
    return [it["track"]["uri"] for it in await all_items(http, url, pid, token)]


def track_uris(catalog, start: int, n: int) -> list[str]:
    return [f"spotify:track:{t}" for t in catalog.track_ids[start:start + n]]


class unblocked:
    """Starting or stopping a whole server inside a test: LocalServer.start resolves its data dir
    path on the loop (os.path.abspath), which the blockbuster fixture flags; pause it meanwhile."""

    def __init__(self, bb) -> None:
        self.bb = bb

    async def __aenter__(self):
        if self.bb is not None:
            self.bb.deactivate()

    async def __aexit__(self, *exc):
        if self.bb is not None:
            self.bb.activate()


async def start_local(data_dir: str, bb, **kw) -> LocalServer:
    async with unblocked(bb):
        return await LocalServer(local_spec(data_dir, **kw)).start()


async def stop_local(srv: LocalServer, bb) -> None:
    async with unblocked(bb):
        await srv.stop()


# -- servers --------------------------------------------------------------------------------------
def local_spec(data_dir: str, **kw) -> ServerSpec:
    return ServerSpec(data_dir=data_dir, port=kw.pop("port", 0), hosts=2, log_level="WARNING",
                      gateway={"rest_rate": 5000, "rest_burst": 5000, "ws_rate": 5000, "ws_burst": 5000}, **kw)


async def create(http, url: str, token: str, name: str = "Road trip", **extra) -> dict:
    status, body = await rest(http, "POST", f"{url}/v1/me/playlists", token, json={"name": name, **extra})
    assert status == 201, body
    return body


async def add(http, url, pid, token, uris, position=None) -> str:
    payload = {"uris": uris} if position is None else {"uris": uris, "position": position}
    status, body = await rest(http, "POST", f"{url}/v1/playlists/{pid}/items", token, json=payload)
    assert status == 201, body
    return body["snapshot_id"]


# == REST: spotipy (current surface) ================================================================
