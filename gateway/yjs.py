"""`/v1/yjs/playlists/{id}`: the y-websocket protocol, so unmodified Yjs clients edit playlists.

The adapter only translates. The playlist entity validates and merges: SyncStep1 -> op yjs_sync,
SyncStep2 / Update -> op yjs_update (applied, checked, corrected in one durable log entry), and
every change reaches this socket as the entity's playlist.changed push, whose `update` is the
client's update plus the server's correction, so the sender converges on the valid document too.
Awareness (who is editing) is relayed through the host (op `relay`), ordered with the document's
pushes and never stored. Viewers are read-only: their sync frames are dropped, as y-websocket does.

y-websocket has no acknowledgements, so a socket whose sync can't go on losslessly (an update
failed for a transient reason, the playlist's host restarted, the subscription was lost) is closed
with 1012: the provider reconnects and the handshake exchanges what either side lacks. A refusal
(no access, or access withdrawn while connected) closes with 4403, which the provider takes as final.
A frame the server will not take is never dropped silently (the provider would never re-send it
and its later updates would stall): over the size limit the socket closes with 1009, over the
rate limit with 4029; the provider reconnects and re-syncs.

Awareness is bounded: a socket owns at most `AWARE_CLIENTS_PER_SOCKET` client ids (the first ids
it announces; entries for other ids — a stock client echoing the states it received — are
ignored), a state is at most `AWARE_STATE_BYTES`, a playlist's cache holds at most
`AWARE_CLIENTS_PER_PLAYLIST` states and forgets one not renewed for `AWARE_TIMEOUT_S` (y-protocols
renews every 15 s). Awareness frames have their own rate budget, so presence never eats the
budget of edits. Nothing is cached or relayed before the socket's access is granted.
"""
from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSMsgType, web

from actors.entity import SYSTEM, Command
from gateway import scopes
from gateway.context import GatewayContext
from gateway.http import CTX, error_response
from gateway.hub import CLOSE_TOKEN_EXPIRED, CLOSE_TOO_MANY, Connection
from gateway.inbox import STOPPED
from gateway.ratelimit import TokenBucket
from gateway.ws import authenticate, upgrade
from gateway.wsframes import FrameWriter
from protocols import yjs
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import PLAYLIST, MessageType
from protocols.wire import Push, Reply

log = logging.getLogger("syncopate.yjs")
CHANGED = MessageType.PLAYLIST_CHANGED.value
AWARENESS = "playlist.awareness"
AWARE_CLIENTS_PER_SOCKET = 4
AWARE_STATE_BYTES = 4096
AWARE_CLIENTS_PER_PLAYLIST = 256
AWARE_TIMEOUT_S = 30.0
AWARE_FOREIGN_LIMIT = 32         # new client ids beyond its share before a socket is closed (4029)
CLOSE_TOO_BIG = 1009


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/yjs/playlists/{id}", endpoint)


_last_update: tuple[Push | None, bytes] = (None, b"")


def update_frame(push: Push, update: bytes) -> bytes:
    """The y-protocols Update message of a playlist.changed push, encoded once however many local
    sockets of the playlist the push is routed to (they follow one another in one loop turn)."""
    global _last_update
    if _last_update[0] is not push:        # held, so no other push can share its identity
        _last_update = (push, yjs.update(update))
    return _last_update[1]


class AwarenessCache:
    """The latest awareness state of every Yjs client of one playlist, as seen by this gateway.
    Bounded in entries (oldest renewal first out) and by age."""

    def __init__(self, max_clients: int = AWARE_CLIENTS_PER_PLAYLIST, timeout_s: float = AWARE_TIMEOUT_S) -> None:
        self.states: dict[int, tuple[int, str, float]] = {}     # client -> (clock, state, renewed at)
        self.max_clients = max_clients
        self.timeout_s = timeout_s
        self.dropped = 0
        self._last: tuple[Push | None, list] = (None, [])

    def merge_push(self, push: Push, data: bytes) -> list[tuple[int, int, str]]:
        """Merge one relayed awareness push once, however many local sockets route it."""
        if self._last[0] is not push:      # held, so no other push can share its identity
            try:
                changed = self.merge(yjs.parse_awareness(data))
            except SyncopateError:
                changed = []
            self._last = (push, changed)
        return self._last[1]

    def merge(self, entries, now: float | None = None) -> list[tuple[int, int, str]]:
        """Apply entries; returns those that changed the cache (what is worth relaying)."""
        now = time.monotonic() if now is None else now
        changed = []
        for client, clock, state in entries:
            old = self.states.get(client)
            if old is not None and clock < old[0]:
                continue
            if state == "null":
                if self.states.pop(client, None) is not None:
                    changed.append((client, clock, state))
                continue
            if len(state) > AWARE_STATE_BYTES:
                self.dropped += 1
                continue
            if old is None and len(self.states) >= self.max_clients:
                self.expire(now)
                if len(self.states) >= self.max_clients:
                    self.dropped += 1
                    continue
            self.states.pop(client, None)          # re-insert: dict order is renewal order
            self.states[client] = (clock, state, now)
            changed.append((client, clock, state))
        return changed

    def expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for client in [c for c, (_, _, at) in self.states.items() if now - at > self.timeout_s]:
            del self.states[client]

    def frame(self) -> bytes | None:
        self.expire()
        if not self.states:
            return None
        return yjs.awareness(yjs.encode_awareness([(c, k, s) for c, (k, s, _) in self.states.items()]))


async def endpoint(request: web.Request) -> web.StreamResponse:
    ctx: GatewayContext = request.app[CTX]
    pid = request.match_info["id"]
    try:
        principal = authenticate(request, ctx)
        await ctx.check_session(principal)
        if not 0 < len(pid) <= 64:
            raise SyncopateError(ErrorCode.NOT_FOUND, "no such playlist")
        scopes.enforce(scopes.USER, principal)       # an app-only token has no user to edit as
        ctx.hub.admit(principal)
    except SyncopateError as err:
        return error_response(err)
    ws = await upgrade(request, ctx, principal)
    frames = FrameWriter(ws)
    conn = ctx.new_connection(principal, encoding="yjs", client="yjs", device_id=principal.device_id,
                              send_raw=ws.send_bytes, send_many=frames.write, write_now=frames.write_now,
                              drain=frames.drain, close=frames.close)
    session = YjsSession(ctx, conn, pid)
    ctx.metrics.connections.labels("yjs").inc()
    try:
        if await session.open():
            ws.inbox.attach(session.on_frame)        # frames reach the session where they are read
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    if msg.data is STOPPED:            # on_frame saw close_with set
                        # Closed from the task that reads the socket, after what is queued: a close
                        # from another task races this loop's own receive.
                        try:
                            await session.conn.flush()
                        except Exception:
                            pass
                        session.conn.closed = True
                        await ws.close(code=session.close_with[0], message=session.close_with[1].encode())
                    break
        else:
            await session.refuse(ws)
    finally:
        session.closed()
        ctx.metrics.connections.labels("yjs").dec()
    return ws


class YjsSession:
    def __init__(self, ctx: GatewayContext, conn: Connection, pid: str) -> None:
        self.ctx, self.conn, self.pid = ctx, conn, pid
        self.subs = ctx.subscriptions
        self.key = f"{PLAYLIST}:{pid}"
        self.origin = self.subs.address(conn)
        self.readonly = True
        self.refusal = 1011                          # close code when open() refuses (4403: terminal)
        self.restarting = False                      # closing (1012) so the client syncs again
        self.clients: dict[int, int] = {}           # awareness client ids this socket owns -> clock
        self.foreign = 0                             # new client ids announced beyond its share
        self.close_with: tuple[int, str] | None = None   # set: the read loop closes with it
        self.bucket = TokenBucket(ctx.config.ws_rate, ctx.config.ws_burst)
        self.aware_bucket = TokenBucket(ctx.config.ws_rate, ctx.config.ws_burst)
        self.cache: AwarenessCache | None = None     # only once access is granted
        # The token's scopes cap the role: without a playlist-modify scope the socket is read-only
        # whatever the playlist allows (gateway/scopes.py, as for the REST and websocket edits).
        try:
            scopes.enforce(scopes.MODIFY_PLAYLIST, conn.principal)
            self.scope_writes = True
        except SyncopateError:
            self.scope_writes = False
        self._expiry: asyncio.TimerHandle | None = None
        conn.on_push = self.on_push
        conn.on_access = self.on_access
        conn.on_ended = self.on_ended
        conn.on_resync = lambda c, key, payload, version: self.restart("the playlist's host restarted")
        conn.send = self.send_message        # the gateway's own messages, never JSON on this socket

    async def open(self) -> bool:
        """Join the playlist: check access, follow its pushes, send our SyncStep1 and who is here."""
        ready: asyncio.Future = asyncio.get_running_loop().create_future()

        def joined(reply: Reply) -> None:
            if reply.ok:
                # membership is in place (subscriptions.join) before the next push is read
                self.readonly = bool(reply.payload.get("readonly")) or not self.scope_writes
                self.cache = self.ctx.yjs_awareness.setdefault(self.key, AwarenessCache())
                self.conn.send_frame(yjs.sync_step1(reply.payload["state_vector"]))
                aw = self.cache.frame()
                if aw:
                    self.conn.send_frame(aw)
            if not ready.done():
                ready.set_result(reply.error)

        self.subs.join(self.conn, Command(PLAYLIST, self.pid, "yjs_sync", {}, self.conn.principal, follow=True),
                       joined)
        err = await ready
        if err is not None:
            self.conn.send_frame(yjs.permission_denied(err.message))
            self.refusal = 4403 if err.status in (401, 403, 404) else 1011
            return False
        exp = self.conn.principal.expires_at
        if exp:
            # y-websocket can't renew a token on an open socket: at expiry it is closed (4401) and
            # the provider reconnects with the token its app supplies then
            self._expiry = asyncio.get_running_loop().call_later(max(0.0, exp - time.time()), self._expired)
        return True

    def _expired(self) -> None:
        if not self.conn.closed:
            self.subs.drop(self.conn)
            self.conn.send_frame(yjs.permission_denied("the access token expired"))
            self.conn.close(CLOSE_TOKEN_EXPIRED, "token expired")

    async def refuse(self, ws: web.WebSocketResponse) -> None:
        """Deliver PermissionDenied, then close with the refusal's code before the handler returns
        (aiohttp closes a returned socket with 1000, which y-websocket answers by reconnecting
        forever; 4403 is terminal for it, 1011 - a transient failure - is retried)."""
        try:
            await self.conn.flush()
        except Exception:          # the peer went away: nothing left to tell it
            pass
        self.conn.closed = True
        await ws.close(code=self.refusal, message=b"refused")

    def on_frame(self, data, is_text: bool) -> bool:
        """The socket's inbox hands each data frame here; True: stop reading, the loop closes."""
        if is_text:
            log.debug("text frame on a Yjs socket ignored")
        else:
            self.frame(data)
        return self.close_with is not None

    def frame(self, data: bytes) -> None:
        if self.conn.closing:
            return
        if not self.subs.follows(self.conn, self.key):
            # the gateway dropped the subscription (a resubscribe after a host restart failed):
            # no push reaches this socket any more, so sync again from scratch
            return self.restart("the subscription was lost")
        if len(data) > self.ctx.config.max_frame_bytes:
            self.ctx.metrics.budget_refused.labels("yjs_frame_bytes").inc()
            log.info("yjs frame of %d bytes on %s: closing (1009)", len(data), self.key)
            return self.refuse_frames(CLOSE_TOO_BIG, "frame too large")
        try:
            messages = yjs.parse_frame(data)
        except SyncopateError as err:
            log.info("malformed yjs frame on %s: %s", self.key, err)
            self.ctx.metrics.errors.labels(err.code.value).inc()
            return self.refuse_frames(1002, "malformed frame")       # protocol error: the provider re-syncs
        for msg in messages:
            if self.close_with is not None:
                return
            bucket = self.aware_bucket if msg.type == 1 else self.bucket
            if bucket.take():
                self.ctx.metrics.budget_refused.labels("yjs_rate").inc()
                log.info("yjs rate limit on %s: closing (4029)", self.key)
                return self.refuse_frames(CLOSE_TOO_MANY, "rate limited")
            if msg.type == 0 and msg.subtype == 0:
                self._request("yjs_sync", {"state_vector": msg.payload},
                              lambda reply: self.conn.send_frame(yjs.sync_step2(reply["update"])))
            elif msg.type == 0:
                if not self.readonly:
                    self._request("yjs_update", {"update": msg.payload}, None)
            elif msg.type == 1:
                self._awareness(msg.payload)
            elif msg.type == yjs.QUERY_AWARENESS:
                aw = self.cache.frame() if self.cache is not None else None
                if aw:
                    self.conn.send_frame(aw)

    def _request(self, op: str, args: dict, on_ok) -> None:
        t0 = time.perf_counter()

        def done(reply: Reply) -> None:
            self.ctx.metrics.yjs_seconds.observe(time.perf_counter() - t0)
            if reply.ok:
                if on_ok is not None:
                    on_ok(reply.payload)
            else:
                self.ctx.metrics.errors.labels(reply.error.code.value).inc()
                log.info("yjs %s on %s refused: %s", op, self.key, reply.error)
                self._failed(op, reply.error)

        self.ctx.request(Command(PLAYLIST, self.pid, op, args, self.conn.principal, origin=self.origin), done)

    def _failed(self, op: str, err: SyncopateError) -> None:
        """y-websocket has no acknowledgements: a client never learns that an update was lost, and
        every later update of that client then waits on the server for the missing one. So when a
        sync message can't be applied for a transient reason (the host crashed or restarted, the
        store failed, no answer in time), close the socket (1012): the provider reconnects and the
        sync handshake exchanges exactly what either side lacks. Access taken away meanwhile:
        NOT_FOUND closes for good (4403); FORBIDDEN makes the socket read-only (a viewer now)."""
        if err.retryable:
            self.restart(f"{op} failed: {err}")
        elif err.code == ErrorCode.NOT_FOUND:
            self.conn.send_frame(yjs.permission_denied(err.message))
            self.conn.close(4403, "refused")
        elif err.code == ErrorCode.FORBIDDEN and op == "yjs_update":
            self.readonly = True
        elif op == "yjs_update":
            # refused for good (invalid, over a limit): the client holds an edit the server never
            # will; a fresh sync at least shows it the server's document
            self.restart(f"{op} refused: {err}")

    def refuse_frames(self, code: int, reason: str) -> None:
        """This socket's frames will not be taken (too large, too fast, malformed, an awareness flood):
        read no more of them, and close with `code` (the endpoint's loop does it)."""
        if self.close_with is None:
            self.close_with = (code, reason)
            self.conn.closing = True

    def restart(self, why: str) -> None:
        if self.conn.closed or self.restarting:
            return
        self.restarting = True
        log.info("yjs socket %s on %s closed for a fresh sync: %s", self.conn.id, self.key, why)
        self.conn.close(1012, "service restart")

    # -- what subscriptions.py tells this socket ---------------------------------------------------
    def on_access(self, conn: Connection, key: str, level: str) -> None:
        """Live authorization: a viewer promoted to editor becomes writable, an editor demoted to
        viewer read-only, without reconnecting."""
        self.readonly = level != "write" or not self.scope_writes

    def on_ended(self, conn: Connection, key: str, err: SyncopateError) -> None:
        self.conn.send_frame(yjs.permission_denied(err.message))
        self.conn.close(4403, "access withdrawn")

    def send_message(self, msg: dict) -> None:
        """What the gateway sends app connections as JSON/msgpack messages: none fit a Yjs socket."""
        log.debug("message %r not sent on a Yjs socket", msg.get("type") if isinstance(msg, dict) else msg)

    def _awareness(self, payload: bytes) -> None:
        if self.cache is None:
            return
        try:
            entries = yjs.parse_awareness(payload)
        except SyncopateError:
            return
        mine = []
        for client, clock, state in entries:
            if client not in self.clients:
                if client in self.cache.states:
                    continue              # someone else's client id: a stock client echoing what it got
                if len(self.clients) >= AWARE_CLIENTS_PER_SOCKET:
                    # a new id beyond this socket's share is no echo (nobody else announced it)
                    self.foreign += 1
                    if self.foreign > AWARE_FOREIGN_LIMIT:
                        self.ctx.metrics.budget_refused.labels("awareness_clients").inc()
                        log.info("awareness flood on %s: closing (4029)", self.key)
                        return self.refuse_frames(CLOSE_TOO_MANY, "awareness budget")
                    continue
            if len(state) > AWARE_STATE_BYTES:
                self.ctx.metrics.budget_refused.labels("awareness_state_bytes").inc()
                continue
            self.clients[client] = max(clock, self.clients.get(client, 0))
            mine.append((client, clock, state))
        if mine:
            self._relay(yjs.encode_awareness(mine))

    def _relay(self, payload: bytes) -> None:
        self.ctx.request(Command(PLAYLIST, self.pid, "relay", {"type": AWARENESS, "payload": {"update": payload}},
                                 SYSTEM, origin=self.origin), lambda reply: None)

    def on_push(self, conn: Connection, push: Push) -> None:
        payload = push.payload
        if push.type == CHANGED:
            update = payload.get("update") if isinstance(payload, dict) else None
            if update:
                conn.send_frame(update_frame(push, update))
        elif push.type == AWARENESS:
            data = payload.get("update") if isinstance(payload, dict) else None
            if data and self.cache is not None:
                changed = self.cache.merge_push(push, data)
                if changed:
                    conn.send_frame(yjs.awareness(yjs.encode_awareness(changed)))

    def closed(self) -> None:
        self.conn.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        if self.clients and self.subs.follows(self.conn, self.key):
            # tell the others these clients left (what y-websocket's server does)
            self._relay(yjs.encode_awareness([(c, k + 1, "null") for c, k in self.clients.items()]))
        self.subs.drop(self.conn)
        self.ctx.hub.remove(self.conn)
        if not self.subs.has_members(self.key):
            self.ctx.yjs_awareness.pop(self.key, None)
