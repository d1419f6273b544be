"""Connections held by this gateway and what each is subscribed to; routes host pushes to them.

A host pushes an event once per gateway; the hub fans it out to the local connections subscribed
to the entity, encoding it at most once per encoding. Each connection has its own outbound queue
drained by one writer task, so one slow socket never stalls the others or the host channel.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from typing import Any, Callable

from actors.entity import Principal
from protocols import codec

log = logging.getLogger("syncopate.hub")
MAX_QUEUED_FRAMES = 10_000          # a connection this far behind is closed rather than buffered forever


class Connection:
    """One client websocket, transport-agnostic: `send_raw(frame)` and `close()` are given by the adapter."""

    def __init__(self, conn_id: str, principal: Principal, *, encoding: str, client: str, device_id: str | None,
                 send_raw: Callable[[Any], Any], close: Callable[[int, str], Any]) -> None:
        self.id = conn_id
        self.principal = principal
        self.encoding = encoding
        self.client = client
        self.device_id = device_id
        self.subs: dict[str, int] = {}              # entity key -> last version delivered
        self.answered: dict[str, int] = {}          # entity key -> version of the answer it subscribed with
        self.connected_at = time.time()
        self.registered_device: str | None = None
        self._send_raw = send_raw
        self._close = close
        self._queue: deque = deque()
        self._writer: asyncio.Task | None = None
        self.closed = False
        self.frames_out = 0
        self.on_push: Callable[["Connection", tuple], bool] | None = None   # Yjs connections override

    def send(self, msg: dict) -> None:
        self.send_frame(codec.encode_ws(msg, self.encoding))

    def send_frame(self, frame: Any) -> None:
        if self.closed:
            return
        if len(self._queue) >= MAX_QUEUED_FRAMES:
            log.warning("connection %s too slow; closing", self.id)
            self.close(1008, "too slow")
            return
        self._queue.append(frame)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._queue and not self.closed:
            frame = self._queue.popleft()
            try:
                await self._send_raw(frame)      # awaits the socket's drain: backpressure per connection
                self.frames_out += 1
            except Exception:
                self.closed = True
                return

    async def flush(self, timeout: float = 5.0) -> None:
        if self._writer is not None and not self._writer.done():
            await asyncio.wait_for(asyncio.shield(self._writer), timeout)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return

        async def later():
            try:
                await self.flush()
            except Exception:
                pass
            self.closed = True
            await self._close(code, reason)

        asyncio.get_running_loop().create_task(later())


class Hub:
    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self._ids = itertools.count(1)
        self.conns: dict[str, Connection] = {}
        self.subs: dict[str, set[Connection]] = {}
        self.pushes = 0

    def new_id(self) -> str:
        return f"c{next(self._ids)}"

    def add(self, conn: Connection) -> None:
        self.conns[conn.id] = conn

    def remove(self, conn: Connection) -> list[str]:
        """Forget a connection; returns the entity keys no local connection subscribes to any more."""
        self.conns.pop(conn.id, None)
        emptied = []
        for key in list(conn.subs):
            if self.unsubscribe(conn, key):
                emptied.append(key)
        return emptied

    def subscribe(self, conn: Connection, key: str, version: int) -> None:
        conn.subs[key] = max(version, conn.subs.get(key, -1))
        conn.answered[key] = conn.subs[key]
        self.subs.setdefault(key, set()).add(conn)

    def unsubscribe(self, conn: Connection, key: str) -> bool:
        """True when this was the last local subscriber of `key`."""
        conn.subs.pop(key, None)
        conn.answered.pop(key, None)
        members = self.subs.get(key)
        if members is None:
            return False
        members.discard(conn)
        if not members:
            del self.subs[key]
            return True
        return False

    def keys(self) -> list[str]:
        return list(self.subs)

    def route(self, item: tuple) -> None:
        """A host push: ("e", key, version, type, payload, to, close, fresh)."""
        _, key, version, mtype, payload, to, close, fresh = item
        if to and to.startswith("conn:"):
            conn = self.conns.get(to.split("/", 1)[1]) if "/" in to else None
            targets = [conn] if conn is not None else []
        else:
            targets = [c for c in self.subs.get(key, ()) if to is None or c.principal.user_id == to]
        if not targets:
            return
        frames: dict[str, Any] = {}
        for conn in targets:
            if conn.on_push is not None:
                conn.on_push(conn, item)
            else:
                # The host stream is ordered and a connection joins `subs` while its subscribe
                # answer is read, so it normally sees only later pushes. The exception: an answer
                # that itself made version N (device.register) is followed by the push of N.
                if fresh and version <= conn.answered.get(key, -1):
                    pass                  # the state of that version reached it as an answer
                else:
                    if key in conn.subs:
                        conn.subs[key] = max(version, conn.subs[key])
                    frame = frames.get(conn.encoding)
                    if frame is None:
                        frame = frames[conn.encoding] = codec.encode_ws(
                            codec.push(mtype, key, version, payload), conn.encoding)
                    conn.send_frame(frame)
                    self.pushes += 1
            if close:
                conn.close(4001, "session ended")
