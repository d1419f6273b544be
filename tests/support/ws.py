"""The tests' app websocket client: the production SimClient (simulations/client.py) underneath,
with reconnection off, and every frame it saw kept in arrival order so tests can assert on them.

    ws = await WsClient(http, url, token).open()        # waits for the server's hello
    res = await ws.request("playlist.get", {"id": pid})  # the answer frame: result or error
    push = await ws.wait(lambda f: f.get("type") == "playlist.changed", since=mark)

`frames` holds the hello, every push and every answer (answers are rebuilt from what SimClient
matched: {"id", "type": "result", "payload", "version"} or {"id", "type": "error", "error": {...}}).
Waiting has a deadline everywhere; a frame that does not come fails the test (AssertionError).
"""
from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp

from simulations.client import ClientError, SimClient


class WsClient:
    def __init__(self, http: aiohttp.ClientSession, url: str, token: str, *, device_id: str | None = None,
                 client: str = "app", sync_session: bool = False) -> None:
        """`sync_session`: after the hello, one round trip to the user's session (its automatic
        subscription was requested before it on the same ordered channel, so from its answer on every
        session push reaches this client)."""
        self.http, self.url, self.token = http, url, token
        self.sim = SimClient(url, token, http=http, device_id=device_id, client=client, reconnect=False)
        self.sync_session = sync_session
        self.frames: list[dict] = []
        self.arrived: list[float] = []          # perf_counter of each frame's arrival
        self.changed = asyncio.Event()          # set whenever a frame arrives or the socket closes
        self.closed = asyncio.Event()
        self.hello: dict | None = None
        self._ids = itertools.count(1)
        self.sim.on("*", self._keep)
        self.sim.on_disconnect(lambda _c: self._gone())

    @property
    def close_code(self) -> int | None:
        return self.sim.close_code

    def _keep(self, frame: dict, t: float | None = None) -> None:
        self.frames.append(frame)
        self.arrived.append(t if t is not None else time.perf_counter())
        self.changed.set()

    def _gone(self) -> None:
        self.closed.set()
        self.changed.set()

    async def open(self) -> "WsClient":
        self.closed.clear()
        try:
            payload = await self.sim.connect()
        except ClientError as err:
            raise AssertionError(f"websocket refused: {err}") from None
        self.hello = {"type": "hello", "payload": payload}
        self._keep(self.hello)
        if self.sync_session:
            await self.request("session.list")
        return self

    def mark(self) -> int:
        return len(self.frames)

    async def wait(self, pred, since: int = 0, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        i = since
        while True:
            while i < len(self.frames):
                if pred(self.frames[i]):
                    return self.frames[i]
                i += 1
            if self.closed.is_set():
                raise AssertionError(f"connection closed ({self.close_code}) while waiting")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("expected frame did not arrive in time")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass

    async def request(self, mtype: str, payload: dict | None = None, op_id: str | None = None,
                      timeout: float = 10.0) -> dict:
        """One request; its answer frame (a result or the server's error)."""
        rid = next(self._ids)
        try:
            res = await self.sim.request(mtype, payload, op_id=op_id, timeout=timeout)
            frame = {"id": rid, "type": "result", "payload": res.payload, "version": res.version}
        except ClientError as err:
            if err.status is None and err.code in ("TIMEOUT", "CONNECTION_LOST"):
                raise AssertionError(f"no answer to {mtype}: {err}") from None    # the client's, not the server's
            frame = {"id": rid, "type": "error", "error": {"code": err.code, "message": err.message,
                                                            "status": err.status, "details": err.details}}
        self._keep(frame)
        return frame

    async def ok(self, mtype: str, payload: dict | None = None, **kw) -> dict:
        """A request that must succeed: its result frame."""
        res = await self.request(mtype, payload, **kw)
        assert res["type"] == "result", res
        return res

    def pushes(self, mtype: str = "playlist.changed", since: int = 0, entity: str | None = None) -> list[dict]:
        return [f for f in self.frames[since:] if f.get("type") == mtype
                and (entity is None or f.get("entity") == entity)]

    async def close(self) -> None:
        await self.sim.close()
        self._gone()
