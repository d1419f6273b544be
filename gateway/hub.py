"""Connections held by this gateway: their identity, their outbound queues and their budgets.

What each connection follows is owned by gateway/subscriptions.py; this module only knows the
sockets. Each connection has its own outbound queue drained by one writer task, so one slow socket
never stalls the others or the host channel. The queue is bounded in BYTES (a frame count let a
client that never reads keep hundreds of megabytes of full playlist answers queued): a connection
over its budget is closed with 4008 "too slow", and nobody else notices.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
import weakref
import zlib
from collections import deque
from typing import Any, Callable

from actors.entity import Principal
from protocols import codec
from protocols.errors import ErrorCode, SyncopateError

log = logging.getLogger("syncopate.hub")

CLOSE_TOO_SLOW = 4008            # the client did not read: its outbound budget ran out
CLOSE_SESSION_ENDED = 4001       # signed out
CLOSE_TOKEN_EXPIRED = 4401       # the access token expired and was not renewed in time
CLOSE_TOO_MANY = 4029            # over a budget (sockets per user, frame rate on a Yjs socket)


def frame_size(frame: Any) -> int:
    # a JSON text frame's length in characters: its bytes but for non-ASCII text (a close estimate)
    return len(frame) if isinstance(frame, (bytes, bytearray, str)) else 64


# The connections with frames queued in this loop turn, by loop: one callback at the end of the
# turn writes them all (a callback per socket was a Handle and a call_soon for each of a push's three
# devices). Weak by loop: a loop closed before its turn ended takes its list with it.
_due: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Connection]]" = weakref.WeakKeyDictionary()


def _flush_at_turn_end(conn: "Connection") -> None:
    loop = asyncio.get_running_loop()
    due = _due.get(loop)
    if due is None:
        _due[loop] = [conn]
        loop.call_soon(_flush_due, loop)
    else:
        due.append(conn)


def _flush_due(loop: asyncio.AbstractEventLoop) -> None:
    # Popped first: a socket that queues again while this runs (a write's callback) goes in the
    # next turn's list, as it did with a callback of its own.
    for conn in _due.pop(loop, ()):
        try:
            conn._flush_now()
        except Exception:                    # one socket's failure must not leave the others unwritten
            log.exception("flushing connection %s failed", conn.id)
            conn.closed = True


class Connection:
    """One client websocket, transport-agnostic: `send_raw(frame)` and `close()` are given by the adapter."""

    def __init__(self, conn_id: str, principal: Principal, *, encoding: str, client: str, device_id: str | None,
                 send_raw: Callable[[Any], Any], close: Callable[[int, str], Any],
                 max_queued_bytes: int = 16 << 20, on_overflow: Callable[["Connection"], None] | None = None,
                 send_many: Callable[[list], Any] | None = None,
                 write_now: Callable[[list], bool] | None = None,
                 drain: Callable[[], Any] | None = None) -> None:
        self.id = conn_id
        self.principal = principal
        self.encoding = encoding
        self.client = client
        self.device_id = device_id
        self.connected_at = time.time()
        self.registered_device: str | None = None
        self.max_queued_bytes = max_queued_bytes
        self.abort_after_s = 10.0
        self._send_raw = send_raw
        self._send_many = send_many          # several queued frames in one socket write (gateway/wsframes.py)
        # The synchronous form of send_many (True: the transport wants `drain` awaited before more):
        # with it, the frames queued in one loop turn are written at the end of the turn (one callback
        # for every socket of the turn, _flush_due), and a writer task exists only while a socket is
        # backpressured.
        self._write_now = write_now if drain is not None else None
        self._drain = drain
        self._flush_due = False
        self._close = close
        # Created with the first frame and dropped when written out: an empty deque is 760 bytes,
        # and almost every socket is idle almost all the time (docs/performance.md).
        self._queue: deque | None = None
        self.queued_bytes = 0
        self._writer: asyncio.Task | None = None
        self.closed = False
        self.closing = False
        self.frames_out = 0
        self._on_overflow = on_overflow or (lambda conn: None)
        # Hooks of the socket's adapter (gateway/ws.py, gateway/yjs.py); subscriptions.py calls them.
        self.on_push: Callable[["Connection", Any], None] | None = None          # a Yjs socket translates
        self.on_ended: Callable[["Connection", str, SyncopateError], None] | None = None
        self.on_access: Callable[["Connection", str, str], None] | None = None   # key, "read" | "write"
        self.on_resync: Callable[["Connection", str, Any, int], None] | None = None

    def send(self, msg: dict) -> None:
        self.send_frame(codec.encode_ws(msg, self.encoding))

    def send_frame(self, frame: Any) -> None:
        if self.closed or self.closing:
            return
        size = frame_size(frame)
        if self.queued_bytes + size > self.max_queued_bytes and self._queue:
            # Over budget with frames still unread: this client does not keep up. Dropping frames
            # would leave it with a silent gap; closing tells it to reconnect and resume.
            log.warning("connection %s too slow (%d bytes queued); closing", self.id, self.queued_bytes)
            self._on_overflow(self)
            self.abort(CLOSE_TOO_SLOW, "too slow")
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(frame)
        self.queued_bytes += size
        if self._writer is None or self._writer.done():
            if self._write_now is None:
                self._writer = asyncio.get_running_loop().create_task(self._write())
            elif not self._flush_due:
                # Later in this turn, not now: the answer and the push of one host frame go together.
                self._flush_due = True
                _flush_at_turn_end(self)

    def _take(self) -> list:
        batch = []
        queue = self._queue
        while queue and len(batch) < 64:
            frame = queue.popleft()
            self.queued_bytes -= frame_size(frame)
            batch.append(frame)
        if not queue:
            self._queue = None
        return batch

    def _flush_now(self) -> None:
        self._flush_due = False
        if self.closed or (self._writer is not None and not self._writer.done()):
            return                               # closed, or a writer task waits on a drain and goes on after it
        while self._queue:
            batch = self._take()
            try:
                backpressured = self._write_now(batch)
            except Exception:
                self.closed = True
                return
            self.frames_out += len(batch)
            if backpressured:
                self._writer = asyncio.get_running_loop().create_task(self._write(drain_first=True))
                return

    async def _write(self, drain_first: bool = False) -> None:
        if drain_first:
            try:
                await self._drain()              # backpressure per connection: the peer reads slowly
            except Exception:
                self.closed = True
                return
        while self._queue and not self.closed:
            if self._send_many is not None:
                # everything queued so far goes in one write (a bounded batch): one system call
                batch = self._take()
                send = self._send_many(batch)
            else:
                frame = self._queue.popleft()
                if not self._queue:
                    self._queue = None
                self.queued_bytes -= frame_size(frame)
                batch = (frame,)
                send = self._send_raw(frame)
            try:
                await send                       # awaits the socket's drain: backpressure per connection
                self.frames_out += len(batch)
            except Exception:
                self.closed = True
                return

    async def flush(self, timeout: float = 5.0) -> None:
        if self._flush_due:
            self._flush_now()                    # frames of this turn not written yet: now, before a close
        if self._writer is not None and not self._writer.done():
            await asyncio.wait_for(asyncio.shield(self._writer), timeout)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after what is queued has been written (a sign-out notice reaches the client)."""
        if self.closed or self.closing:
            return
        self.closing = True

        async def later():
            try:
                await self.flush()
            except Exception:
                pass
            self.closed = True
            await self._close(code, reason)

        asyncio.get_running_loop().create_task(later())

    def abort(self, code: int, reason: str) -> None:
        """Close, dropping what is queued (a client over its budget gets nothing more). A frame being
        written is finished first — cut mid-frame, the stream would be garbage to the client — then
        the close frame follows; a client that never reads again is cut off when `abort_after_s`
        runs out."""
        if self.closed or self.closing:
            return
        self.closing = True
        self._queue = None
        self.queued_bytes = 0

        async def later():
            writer = self._writer
            try:
                if writer is not None and not writer.done():
                    await asyncio.wait_for(asyncio.shield(writer), self.abort_after_s)
            except Exception:
                pass
            self.closed = True
            try:
                await asyncio.wait_for(self._close(code, reason), self.abort_after_s)
            except Exception:
                pass
            if writer is not None and not writer.done():
                writer.cancel()

        asyncio.get_running_loop().create_task(later())


class Hub:
    """The gateway's connections, by id and by user. Ids are unique across gateway restarts (a random
    prefix per hub), so a session entry left from before a restart can't address someone's new socket."""

    def __init__(self, gateway_id: str, *, max_sockets_per_user: int = 50, heartbeat_slots: int = 1) -> None:
        self.gateway_id = gateway_id
        self._prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._ops = itertools.count(1)
        self.conns: dict[str, Connection] = {}
        self.by_user: dict[str, set[Connection]] = {}
        self._reserved: dict[str, int] = {}          # admitted, upgrade in progress (not yet added)
        self.max_sockets_per_user = max_sockets_per_user
        # The users with a connection here, by heartbeat slot (crc32(user) % slots): the session
        # heartbeat (gateway/runner.py) visits one slot a tick, not every connection of the gateway
        # (30,000 sockets scanned every second was a stall of tens of ms).
        self.heartbeat_slots = max(1, heartbeat_slots)
        self.users_by_slot: list[set[str]] = [set() for _ in range(self.heartbeat_slots)]
        self.refused_sockets = 0
        self.slow_closed = 0

    def new_id(self) -> str:
        return f"c{self._prefix}{next(self._ids)}"

    def new_op_id(self) -> str:
        """An op id for a command the client sent without one: unique across this gateway's restarts
        (the random prefix) and cheap (no urandom call per command, as uuid4 made)."""
        return f"g{self._prefix}.{next(self._ops)}"

    def admit(self, principal: Principal) -> None:
        """Refuse a socket beyond the user's budget, before the upgrade (HTTP 429). An admitted socket
        holds its place while it upgrades (sockets opened all at once are counted as they come),
        until `add` or `release`."""
        uid = principal.user_id
        if len(self.by_user.get(uid, ())) + self._reserved.get(uid, 0) >= self.max_sockets_per_user:
            self.refused_sockets += 1
            raise SyncopateError(ErrorCode.RATE_LIMITED,
                                 f"at most {self.max_sockets_per_user} open sockets per user", retry_after_ms=1000)
        self._reserved[uid] = self._reserved.get(uid, 0) + 1

    def release(self, principal: Principal) -> None:
        """An admitted socket that never became a connection (its upgrade failed)."""
        uid = principal.user_id
        n = self._reserved.get(uid, 0) - 1
        if n > 0:
            self._reserved[uid] = n
        else:
            self._reserved.pop(uid, None)

    def add(self, conn: Connection) -> None:
        self.release(conn.principal)
        self.conns[conn.id] = conn
        uid = conn.principal.user_id
        mine = self.by_user.get(uid)
        if mine is None:
            mine = self.by_user[uid] = set()
            self.users_by_slot[self.slot_of(uid)].add(uid)
        mine.add(conn)

    def remove(self, conn: Connection) -> None:
        self.conns.pop(conn.id, None)
        mine = self.by_user.get(conn.principal.user_id)
        if mine is not None:
            mine.discard(conn)
            if not mine:
                uid = conn.principal.user_id
                del self.by_user[uid]
                self.users_by_slot[self.slot_of(uid)].discard(uid)

    def slot_of(self, user_id: str) -> int:
        return zlib.crc32(user_id.encode()) % self.heartbeat_slots

    def get(self, conn_id: str, user_id: str | None) -> Connection | None:
        """The connection with this id, if it is (still) that user's: a push addressed to a connection
        is delivered only to the user it was meant for."""
        conn = self.conns.get(conn_id)
        if conn is None or (user_id is not None and conn.principal.user_id != user_id):
            return None
        return conn

    def user_conns(self, user_id: str) -> list[Connection]:
        return list(self.by_user.get(user_id, ()))
