"""Connect devices for the player tests: a device is a websocket client that registers with
`device.register` and keeps every `player.changed` cluster it is pushed (tests/test_player_rest.py,
tests/test_connect_integration.py)."""
from __future__ import annotations

import asyncio
import itertools
import secrets
import time
import uuid

import aiohttp
import orjson

from protocols.uris import BASE62


RETRYABLE = {"HOST_UNAVAILABLE", "TIMEOUT", "STALE_EPOCH", "NOT_OWNER", "STORE_UNAVAILABLE"}


# == a Connect device on a websocket (also used by tests/test_connect_integration.py) ==============

class WsError(Exception):
    def __init__(self, frame: dict) -> None:
        self.error = frame["error"]
        self.code = frame["error"]["code"]
        super().__init__(f"{self.code}: {frame['error'].get('message')}")


class Device:
    """One websocket client. Answers are matched by request id; every `player.changed` push (and every
    `resync`) is kept in arrival order, so tests can check that no revision was lost or reordered."""

    _ids = itertools.count(1)

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str, device_id: str | None = None,
                 **register) -> None:
        self.http, self.url, self.token = http, url, token
        self.device_id = device_id
        self.register_args = register
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.pushes: list[dict] = []          # player.changed payloads, in arrival order
        self.resyncs: list[dict] = []
        self.other: list[dict] = []           # every frame but answers: type, entity, version (diagnostics)
        self.stray: list[dict] = []           # answers to ids this device never sent (must stay empty)
        self.manifests: list[dict] = []       # stream.manifest payloads (URL refreshes), in arrival order
        self.hello: dict | None = None
        self.cluster: dict | None = None      # the register answer
        self._waiting: dict[str, asyncio.Future] = {}
        self._changed = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self.closed = asyncio.Event()
        self._prefix = f"{device_id or 'conn'}-{uuid.uuid4().hex[:6]}-"

    async def connect(self) -> Device:
        self.ws = await self.http.ws_connect(f"{self.url}/v1/ws?token={self.token}")
        msg = await asyncio.wait_for(self.ws.receive(), 10)
        self.hello = orjson.loads(msg.data)
        assert self.hello["type"] == "hello", self.hello
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                f = orjson.loads(msg.data)
                t = f.get("type")
                if t in ("result", "error") and f.get("id") is not None:
                    fut = self._waiting.pop(str(f["id"]), None)
                    if fut is not None and not fut.done():
                        fut.set_result(f)
                    elif not str(f["id"]).startswith(self._prefix):
                        self.stray.append(f)
                else:
                    self.other.append({k: f.get(k) for k in ("type", "entity", "version")})
                if t == "player.changed":
                    self.pushes.append(f["payload"])
                elif t == "resync" and str(f.get("entity", "")).startswith("devicegroup:"):
                    self.resyncs.append(f["payload"])
                elif t == "stream.manifest":
                    self.manifests.append(f["payload"])
                self._changed.set()
        finally:
            self.closed.set()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("websocket closed"))
            self._changed.set()

    async def request(self, type_: str, payload: dict | None = None, *, op_id: str | None = None,
                      timeout: float = 15.0) -> dict:
        rid = f"{self._prefix}{next(self._ids)}"
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        frame = {"id": rid, "type": type_, "payload": payload or {}}
        if op_id is not None:
            frame["op_id"] = op_id
        await self.ws.send_str(orjson.dumps(frame).decode())
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(rid, None)

    async def call(self, type_: str, payload: dict | None = None, *, op_id: str | None = None,
                   deadline_s: float = 60.0) -> dict | None:
        """A request whose error raises WsError; retryable errors are retried with the same op id."""
        op_id = op_id or uuid.uuid4().hex
        end = time.monotonic() + deadline_s
        while True:
            try:
                f = await self.request(type_, payload, op_id=op_id, timeout=max(1.0, end - time.monotonic()))
            except TimeoutError:
                if time.monotonic() > end:
                    raise
                continue
            if f["type"] == "result":
                return f.get("payload")
            if f["error"]["code"] in RETRYABLE and time.monotonic() < end:
                await asyncio.sleep(0.05)          # back-off between retries, not a synchronisation
                continue
            raise WsError(f)

    async def register(self) -> dict:
        args = {"device_id": self.device_id, **self.register_args}
        self.cluster = await self.call("device.register", args)
        return self.cluster

    @property
    def latest(self) -> dict | None:
        """The newest cluster this device knows (register answer or pushes)."""
        cands = [c for c in [self.cluster, *self.pushes, *self.resyncs] if c is not None]
        return max(cands, key=lambda c: c["revision"]) if cands else None

    @property
    def revision(self) -> int:
        c = self.latest
        return c["revision"] if c else 0

    async def wait_for(self, pred, *, timeout: float = 10.0, start: int = 0) -> dict:
        """The first push (from index `start`) that satisfies `pred`; fails at the deadline."""
        end = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.pushes):
                if pred(self.pushes[i]):
                    return self.pushes[i]
                i += 1
            left = end - time.monotonic()
            if left <= 0 or self.closed.is_set():
                raise AssertionError(f"{self.device_id}: no matching push within {timeout}s; "
                                     f"last: {self.pushes[-1] if self.pushes else None}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    async def wait_state(self, pred, *, timeout: float = 10.0) -> dict:
        """The newest cluster this device knows (answers, pushes, resyncs) once it satisfies `pred`."""
        end = time.monotonic() + timeout
        while True:
            c = self.latest
            if c is not None and pred(c):
                return c
            left = end - time.monotonic()
            if left <= 0 or self.closed.is_set():
                raise AssertionError(f"{self.device_id}: state never matched within {timeout}s; latest: {c}; "
                                     f"frames: {self.other[-8:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    async def wait_revision(self, rev: int, *, timeout: float = 10.0) -> dict:
        return await self.wait_for(lambda c: c["revision"] >= rev, timeout=timeout)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait_for(self.closed.wait(), 10)


def assert_in_order(dev: Device) -> None:
    """Every push this device received has a revision one above the one before (none lost, none
    out of order), starting from its register answer."""
    pushes = [c["revision"] for c in dev.pushes]
    # The push of the device's own registration may follow its answer (when another connection on
    # this gateway already follows the group): the same revision again, not a gap.
    if pushes and pushes[0] == dev.cluster["revision"]:
        pushes = pushes[1:]
    revs = [dev.cluster["revision"]] + pushes
    gaps = [(a, b) for a, b in itertools.pairwise(revs) if b != a + 1]
    assert not gaps, f"{dev.device_id}: revisions out of order or missing: {gaps} in {revs}"


async def wait_version(dev: Device, pid: str, version: int, timeout: float = 20.0) -> None:
    """Poll `playlist.get` until the playlist reaches `version` (a change that pushes nothing)."""
    end = time.monotonic() + timeout
    while (await dev.call("playlist.get", {"id": pid}))["version"] < version:
        assert time.monotonic() < end, f"playlist {pid} never reached version {version}"
        await asyncio.sleep(0.02)              # polling interval; the condition is the version


def new_playlist_id() -> str:
    return "".join(secrets.choice(BASE62) for _ in range(22))


# == fixtures ====================================================================================
