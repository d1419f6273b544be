"""An async client for Syncopate's websocket envelope (protocols/messages.py), for simulations.

    client = SimClient(base_url, token, device_id="phone-1")
    await client.connect()                               # waits for the server's `hello`
    res = await client.call("library.save", {"uris": [...]})   # retried with one op id until acked
    client.on("library.changed", lambda msg, t: ...)     # pushes, with their arrival time

- Requests carry an integer `id`; the answer (`result` or `error`) is matched by it. One client can
  have any number of requests in flight.
- `request()` is one attempt. `call()` retries a retryable failure (HOST_UNAVAILABLE, STALE_EPOCH,
  STORE_UNAVAILABLE, TIMEOUT, RATE_LIMITED, or the connection dropping) with the SAME op id, so a
  mutation that did commit before its answer was lost is answered from the entity's log, never
  applied twice. Mutations get an op id automatically.
- Reconnect: when the socket drops (and the client was not closed), the client reconnects with
  jittered backoff, then runs the `on_reconnect` hooks (resubscribe with `since`, re-register a
  device, ...). Requests that were in flight fail with CONNECTION_LOST (retryable).
- `drop()` aborts the TCP connection without a close frame: what a phone losing its network does.

Times are `time.perf_counter()` seconds (one clock for every client of the process); wall-clock
milliseconds are used only where another process stamps the other end (Node Yjs clients).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgpack
import orjson

log = logging.getLogger("syncopate.sim.client")

RETRYABLE = frozenset({"HOST_UNAVAILABLE", "STALE_EPOCH", "NOT_OWNER", "STORE_UNAVAILABLE", "TIMEOUT", "RATE_LIMITED",
                       "CONNECTION_LOST", "INTERNAL_RETRY"})

# Requests that change state: they get an op id so that a retry is applied once.
MUTATIONS = frozenset({
    "playlist.create", "playlist.update_details", "playlist.add", "playlist.reorder", "playlist.replace",
    "playlist.remove", "playlist.follow", "playlist.unfollow", "playlist.set_collaborator",
    "playlist.remove_collaborator",
    "device.register", "device.update", "device.progress",
    "player.transfer", "player.play", "player.pause", "player.next", "player.previous", "player.seek",
    "player.repeat", "player.shuffle", "player.volume", "player.queue_add",
    "library.save", "library.remove", "session.end",
})

PushHandler = Callable[[dict, float], Any]


class ClientError(Exception):
    """An `error` frame (or a client-side failure: TIMEOUT, CONNECTION_LOST)."""

    def __init__(self, code: str, message: str = "", status: int | None = None, details: dict | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE


class Result:
    __slots__ = ("attempts", "done", "payload", "sent", "version")

    def __init__(self, payload: Any, version: int | None, sent: float, done: float, attempts: int = 1):
        self.payload = payload
        self.version = version
        self.sent = sent            # perf_counter when the (first) request was sent
        self.done = done            # perf_counter when the answer arrived
        self.attempts = attempts

    @property
    def ms(self) -> float:
        return (self.done - self.sent) * 1000.0

    def __repr__(self) -> str:
        return f"Result(version={self.version}, ms={self.ms:.2f}, payload={self.payload!r:.200})"


def ws_url(base_url: str, path: str = "/v1/ws") -> str:
    base = base_url.rstrip("/")
    if base.startswith("http://"):
        base = "ws://" + base[len("http://"):]
    elif base.startswith("https://"):
        base = "wss://" + base[len("https://"):]
    return base + path


def new_session(limit: int = 0) -> aiohttp.ClientSession:
    """One HTTP session for many simulated clients (no per-host connection cap)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, force_close=False),
                                 timeout=aiohttp.ClientTimeout(total=None, connect=30))


class SimClient:
    _uids = itertools.count(1)

    def __init__(self, base_url: str | Callable[[], str], token: str | Callable[[], str], *, http: aiohttp.ClientSession | None = None,
                 device_id: str | None = None, client: str = "app", encoding: str = "json",
                 name: str | None = None, reconnect: bool = True, reconnect_timeout_s: float = 120.0,
                 on_retry: Callable[[str, ClientError], None] | None = None) -> None:
        self.base_url = base_url
        self._token = token
        self.device_id = device_id
        self.client = client
        self.encoding = encoding
        self.name = name or f"c{next(self._uids)}"
        self.reconnect_enabled = reconnect
        self.reconnect_timeout_s = reconnect_timeout_s
        self.on_retry = on_retry
        self._http = http
        self._own_http = http is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self._ops = itertools.count(1)
        self._op_prefix = f"{self.name}-{uuid.uuid4().hex[:8]}"
        self._pending: dict[int, tuple[asyncio.Future, float]] = {}
        self._handlers: dict[str, list[PushHandler]] = {}
        self._reconnect_hooks: list[Callable[[SimClient], Awaitable[None]]] = []
        self._disconnect_hooks: list[Callable[[SimClient], None]] = []
        self.connected = asyncio.Event()
        self._closing = False
        self._reconnecting: asyncio.Task | None = None
        self._hello_fut: asyncio.Future | None = None
        self.hello: dict | None = None
        # counters
        self.connects = 0
        self.disconnects = 0
        self.retries = 0
        self.frames_in = 0
        self.frames_out = 0
        self.pushes: dict[str, int] = {}
        self.unmatched_errors: list[dict] = []
        self.last_connect_s: float | None = None       # duration of the last (re)connect, hello included
        self.disconnected_at: float | None = None
        self.close_code: int | None = None

    # -- configuration -----------------------------------------------------------------------
    def on(self, mtype: str, handler: PushHandler) -> None:
        """Call handler(msg, arrival_perf_counter) for every push of `mtype` ("*" = every push)."""
        self._handlers.setdefault(mtype, []).append(handler)

    def on_reconnect(self, hook: Callable[[SimClient], Awaitable[None]]) -> None:
        self._reconnect_hooks.append(hook)

    def on_disconnect(self, hook: Callable[[SimClient], None]) -> None:
        self._disconnect_hooks.append(hook)

    @property
    def token(self) -> str:
        return self._token() if callable(self._token) else self._token

    @property
    def is_connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and self.connected.is_set()

    def new_op_id(self) -> str:
        return f"{self._op_prefix}-{next(self._ops)}"

    # -- connection ----------------------------------------------------------------------------
    def _url(self) -> str:
        q = {"token": self.token}
        if self.device_id:
            q["device_id"] = self.device_id
        if self.client != "app":
            q["client"] = self.client
        from urllib.parse import urlencode
        base = self.base_url() if callable(self.base_url) else self.base_url
        return ws_url(base) + "?" + urlencode(q)

    async def connect(self, timeout: float = 15.0) -> dict:
        """Open the socket and wait for the server's hello. Raises ClientError on refusal."""
        self._closing = False
        if self.is_connected:                 # never two sockets for one client
            return self.hello or {}
        return await self._open(timeout)

    async def _open(self, timeout: float = 15.0) -> dict:
        if self._http is None:
            self._http = new_session()
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            ws = await asyncio.wait_for(self._http.ws_connect(self._url(), max_msg_size=0, autoping=True,
                                                              heartbeat=None), timeout)
        except aiohttp.WSServerHandshakeError as exc:
            code = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 429: "RATE_LIMITED"}.get(exc.status, "CONNECTION_LOST")
            if exc.status >= 500:
                code = "CONNECTION_LOST"
            raise ClientError(code, f"handshake refused: {exc.status} {exc.message}", exc.status) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ClientError("CONNECTION_LOST", f"connect failed: {type(exc).__name__}: {exc}") from None
        self._hello_fut = loop.create_future()
        self._ws = ws
        self._reader = loop.create_task(self._read(ws), name=f"{self.name}-reader")
        try:
            hello = await asyncio.wait_for(asyncio.shield(self._hello_fut), timeout)
        except TimeoutError:
            await self._abort_ws(ws)
            raise ClientError("TIMEOUT", "no hello from the server") from None
        except ClientError:
            await self._abort_ws(ws)
            raise
        self.hello = hello
        self.connects += 1
        self.last_connect_s = time.perf_counter() - t0
        self.connected.set()
        return hello

    async def close(self) -> None:
        """Close for good: no reconnect."""
        self._closing = True
        self.connected.clear()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        ws = self._ws
        if ws is not None and not ws.closed:
            try:
                await asyncio.wait_for(ws.close(), 5)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.debug("%s: close: %s", self.name, exc)
        if self._reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), 5)
            except TimeoutError:
                log.debug("%s: reader still running after close", self.name)
        self._fail_pending("CONNECTION_LOST", "client closed")
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    async def drop(self) -> None:
        """Lose the connection abruptly (no close frame). The client reconnects if enabled."""
        ws = self._ws
        if ws is not None:
            await self._abort_ws(ws)

    async def _abort_ws(self, ws) -> None:
        conn = getattr(ws, "_conn", None)
        transport = getattr(conn, "transport", None) if conn is not None else None
        if transport is not None:
            transport.abort()
        else:
            try:
                await ws.close()
            except (aiohttp.ClientError, OSError) as exc:
                log.debug("%s: close: %s", self.name, exc)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    frame = orjson.loads(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    frame = msgpack.unpackb(msg.data, raw=False, strict_map_key=False)
                else:
                    break
                self.frames_in += 1
                if self._frame(frame):
                    # An answer woke its caller: let it run (e.g. load a subscribe answer into a replica)
                    # before the push handlers see the frames that follow it on this socket.
                    await asyncio.sleep(0)
        except Exception as exc:  # noqa: BLE001 - a decode or transport error: treat it as a drop
            log.debug("%s reader: %s", self.name, exc)
        finally:
            self.close_code = ws.close_code
            if self._ws is ws:
                self._lost()

    def _frame(self, frame: dict) -> bool:
        """Handle one frame; True when it answered a request (its caller was woken)."""
        t = time.perf_counter()
        mtype = frame.get("type")
        if mtype in ("result", "error", "pong"):
            rid = frame.get("id")
            entry = self._pending.pop(rid, None) if rid is not None else None
            if entry is None:
                if mtype == "error":
                    self.unmatched_errors.append(frame.get("error") or {})
                    if self._hello_fut is not None and not self._hello_fut.done():
                        err = frame.get("error") or {}
                        self._hello_fut.set_exception(ClientError(err.get("code", "UNKNOWN"), err.get("message", ""),
                                                                  err.get("status")))
                return
            fut, _ = entry
            if not fut.done():
                if mtype == "error":
                    err = frame.get("error") or {}
                    fut.set_exception(ClientError(err.get("code", "UNKNOWN"), err.get("message", ""),
                                                  err.get("status"), err.get("details")))
                else:
                    fut.set_result((frame.get("payload"), frame.get("version"), t))
                return True
            return False
        if mtype == "hello":
            if self._hello_fut is not None and not self._hello_fut.done():
                self._hello_fut.set_result(frame.get("payload") or {})
            return
        self.pushes[mtype] = self.pushes.get(mtype, 0) + 1
        for h in self._handlers.get(mtype, ()):
            try:
                h(frame, t)
            except Exception:
                log.exception("%s: push handler for %s failed", self.name, mtype)
        for h in self._handlers.get("*", ()):
            try:
                h(frame, t)
            except Exception:
                log.exception("%s: push handler failed", self.name)

    def _fail_pending(self, code: str, message: str) -> None:
        pending, self._pending = self._pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(ClientError(code, message))
        if self._hello_fut is not None and not self._hello_fut.done():
            self._hello_fut.set_exception(ClientError(code, message))
            self._hello_fut.exception()       # whoever waited has its own copy (shield): mark it seen

    def _lost(self) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        self._ws = None
        self._fail_pending("CONNECTION_LOST", "the connection dropped")
        if was:
            self.disconnects += 1
            self.disconnected_at = time.perf_counter()
            for hook in self._disconnect_hooks:
                try:
                    hook(self)
                except Exception:
                    log.exception("%s: disconnect hook failed", self.name)
        if self.reconnect_enabled and not self._closing and was and self._reconnecting is None:
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        deadline = time.perf_counter() + self.reconnect_timeout_s
        delay = 0.05
        try:
            while not self._closing and time.perf_counter() < deadline:
                await asyncio.sleep(delay * (0.5 + random.random()))      # jittered backoff
                delay = min(delay * 2, 2.0)
                try:
                    await self._open()
                except ClientError as err:
                    if err.code in ("UNAUTHORIZED", "SESSION_ENDED", "FORBIDDEN", "TOKEN_EXPIRED"):
                        log.info("%s: reconnect refused: %s", self.name, err)
                        return
                    continue
                for hook in self._reconnect_hooks:
                    try:
                        await hook(self)
                    except ClientError as err:
                        log.debug("%s: reconnect hook: %s", self.name, err)
                    except Exception:
                        log.exception("%s: reconnect hook failed", self.name)
                return
        finally:
            self._reconnecting = None

    async def wait_connected(self, timeout: float) -> None:
        if self.connected.is_set():
            return
        if self._closing:
            raise ClientError("CONNECTION_LOST", "client closed")
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except TimeoutError:
            raise ClientError("CONNECTION_LOST", "not connected") from None

    # -- requests ------------------------------------------------------------------------------
    async def send_raw(self, msg: dict) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ClientError("CONNECTION_LOST", "not connected")
        try:
            if self.encoding == "msgpack":
                await ws.send_bytes(msgpack.packb(msg, use_bin_type=True))
            else:
                await ws.send_str(orjson.dumps(msg).decode())
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise ClientError("CONNECTION_LOST", f"send failed: {exc}") from None
        self.frames_out += 1

    async def request(self, mtype: str, payload: dict | None = None, *, op_id: str | None = None,
                      timeout: float = 10.0) -> Result:
        """One attempt. Raises ClientError (the server's error, TIMEOUT, or CONNECTION_LOST)."""
        await self.wait_connected(timeout)
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        fut = loop.create_future()
        sent = time.perf_counter()
        self._pending[rid] = (fut, sent)
        msg: dict = {"id": rid, "type": mtype, "payload": payload or {}}
        if op_id:
            msg["op_id"] = op_id
        timer = loop.call_later(timeout, _expire, fut, mtype, timeout)
        try:
            await self.send_raw(msg)
            body, version, done = await fut
        finally:
            timer.cancel()
            self._pending.pop(rid, None)
        return Result(body, version, sent, done)

    async def call(self, mtype: str, payload: dict | None = None, *, op_id: str | None = None,
                   mutate: bool | None = None, retries: int = 30, timeout: float = 10.0,
                   retry_deadline_s: float = 90.0) -> Result:
        """Request with retries on retryable failures, reusing one op id (mutations get one).
        30 attempts (backoff up to 2 s, jittered) outlast a node loss: Ray takes ~15 s to mark a
        node dead and restart its hosts elsewhere (`--kill-node-at`); 8 did not."""
        if mutate is None:
            mutate = mtype in MUTATIONS
        if mutate and op_id is None:
            op_id = self.new_op_id()
        first = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                res = await self.request(mtype, payload, op_id=op_id, timeout=timeout)
            except ClientError as err:
                if not err.retryable or attempt > retries or time.perf_counter() - first > retry_deadline_s:
                    raise
                self.retries += 1
                if self.on_retry is not None:
                    self.on_retry(mtype, err)
                wait = min(2.0, 0.05 * 2 ** (attempt - 1)) * (0.5 + random.random())
                if err.code == "RATE_LIMITED":
                    wait = max(wait, (err.details.get("retry_after_ms") or 100) / 1000)
                await asyncio.sleep(wait)       # retry backoff
                continue
            res.sent = first
            res.attempts = attempt
            return res

    async def fetch_first_chunk(self, stream: dict, timeout: float = 10.0) -> tuple[int, float, int]:
        """Fetch the first chunk a stream manifest names (gateway/stream_sign.py) from the edge, as a
        player starting a track does: (status, perf_counter at its first body byte, bytes read)."""
        fc = stream["first_chunk"]
        base = self.base_url() if callable(self.base_url) else self.base_url
        http = self._http
        if http is None:
            raise ClientError("CONNECTION_LOST", "not connected")
        headers = {"Authorization": f"Bearer {self.token}", "Range": fc["range"]}
        if self.device_id:
            headers["X-Syncopate-Device"] = self.device_id
        async with http.get(base.rstrip("/") + fc["url"], headers=headers,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            first = await r.content.readany()
            at = time.perf_counter()
            rest = await r.read()
            return r.status, at, len(first) + len(rest)

    async def ping(self, timeout: float = 10.0) -> float:
        res = await self.request("ping", {}, timeout=timeout)
        return res.ms

    async def subscribe(self, entity: str, since: int | None = None, **kw) -> Result:
        payload: dict = {"entity": entity}
        if since is not None:
            payload["since"] = since
        return await self.call("subscribe", payload, mutate=False, **kw)


def _expire(fut: asyncio.Future, mtype: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(ClientError("TIMEOUT", f"no answer to {mtype} within {timeout:g} s"))
