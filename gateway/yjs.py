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
(no access) closes with 4403, which the provider takes as final.
"""
from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSMsgType, web

from actors.entity import SYSTEM, Command
from gateway.context import GatewayContext
from gateway.http import CTX, error_response
from gateway.hub import Connection
from gateway.ratelimit import TokenBucket
from gateway.ws import authenticate
from protocols import yjs
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import PLAYLIST, MessageType

log = logging.getLogger("syncopate.yjs")
CHANGED = MessageType.PLAYLIST_CHANGED.value
AWARENESS = "playlist.awareness"


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/yjs/playlists/{id}", endpoint)


class AwarenessCache:
    """The latest awareness state of every Yjs client of one playlist, as seen by this gateway."""

    def __init__(self) -> None:
        self.states: dict[int, tuple[int, str]] = {}

    def merge(self, entries) -> None:
        for client, clock, state in entries:
            old = self.states.get(client)
            if old is None or clock >= old[0]:
                if state == "null":
                    self.states.pop(client, None)
                else:
                    self.states[client] = (clock, state)

    def frame(self) -> bytes | None:
        if not self.states:
            return None
        return yjs.awareness(yjs.encode_awareness([(c, k, s) for c, (k, s) in self.states.items()]))


async def endpoint(request: web.Request) -> web.StreamResponse:
    ctx: GatewayContext = request.app[CTX]
    pid = request.match_info["id"]
    try:
        principal = authenticate(request, ctx)
        await ctx.check_session(principal)
        if not 0 < len(pid) <= 64:
            raise SyncopateError(ErrorCode.NOT_FOUND, "no such playlist")
    except SyncopateError as err:
        return error_response(err)
    ws = web.WebSocketResponse(heartbeat=ctx.config.heartbeat_s, max_msg_size=ctx.config.max_frame_bytes * 4,
                               compress=False)   # small frames: deflate costs both ends more than it saves
    await ws.prepare(request)
    conn = Connection(ctx.hub.new_id(), principal, encoding="yjs", client="yjs", device_id=principal.device_id,
                      send_raw=ws.send_bytes, close=lambda code, reason: ws.close(code=code, message=reason.encode()))
    session = YjsSession(ctx, conn, pid)
    conn.on_push = session.on_push
    conn.send = session.send_message        # the gateway's own messages (a `resync`), never JSON on this socket
    ctx.hub.add(conn)
    ctx.metrics.connections.labels("yjs").inc()
    try:
        if await session.open():
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    session.frame(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    log.debug("text frame on a Yjs socket ignored")
                elif msg.type == WSMsgType.ERROR:
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
        self.key = f"{PLAYLIST}:{pid}"
        self.origin = (ctx.gateway_id, conn.id)
        self.readonly = True
        self.refusal = 1011                          # close code when open() refuses (4403: terminal)
        self.restarting = False                      # closing (1012) so the client syncs again
        self.clients: dict[int, int] = {}           # awareness client ids this socket announced -> clock
        self.bucket = TokenBucket(ctx.config.ws_rate, ctx.config.ws_burst)
        self.cache = ctx.yjs_awareness.setdefault(self.key, AwarenessCache())

    async def open(self) -> bool:
        """Join the playlist: check access, follow its pushes, send our SyncStep1 and who is here."""
        ready: asyncio.Future = asyncio.get_running_loop().create_future()

        def joined(ok, payload, version):
            if ok:
                self.ctx.hub.subscribe(self.conn, self.key, version)    # before the next push is read
                self.readonly = bool(payload.get("readonly"))
                self.conn.send_frame(yjs.sync_step1(payload["state_vector"]))
                aw = self.cache.frame()
                if aw:
                    self.conn.send_frame(aw)
            if not ready.done():
                ready.set_result(payload if not ok else None)

        self.ctx.request(Command(PLAYLIST, self.pid, "yjs_sync", {}, self.conn.principal, origin=self.origin,
                                 follow=True), joined)
        err = await ready
        if err is not None:
            self.conn.send_frame(yjs.permission_denied(err.message if isinstance(err, SyncopateError) else str(err)))
            self.refusal = 4403 if getattr(err, "status", 0) in (401, 403, 404) else 1011
            return False
        return True

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

    def frame(self, data: bytes) -> None:
        if self.key not in self.conn.subs and not self.conn.closed:
            # the gateway dropped the subscription (a resubscribe after a host restart failed):
            # no push reaches this socket any more, so sync again from scratch
            return self.restart("the subscription was lost")
        if len(data) > self.ctx.config.max_frame_bytes or self.bucket.take():
            log.info("yjs frame refused (size %d or rate) on %s", len(data), self.key)
            return
        try:
            messages = yjs.parse_frame(data)
        except SyncopateError as err:
            log.info("malformed yjs frame on %s: %s", self.key, err)
            return
        for msg in messages:
            if msg.type == 0 and msg.subtype == 0:
                self._request("yjs_sync", {"state_vector": msg.payload},
                              lambda reply: self.conn.send_frame(yjs.sync_step2(reply["update"])))
            elif msg.type == 0:
                if not self.readonly:
                    self._request("yjs_update", {"update": msg.payload}, None)
            elif msg.type == 1:
                self._awareness(msg.payload)
            elif msg.type == yjs.QUERY_AWARENESS:
                aw = self.cache.frame()
                if aw:
                    self.conn.send_frame(aw)

    def _request(self, op: str, args: dict, on_ok) -> None:
        t0 = time.perf_counter()

        def done(ok, payload, version):
            self.ctx.metrics.request_seconds.labels("yjs").observe(time.perf_counter() - t0)
            if ok:
                if on_ok is not None:
                    on_ok(payload)
            else:
                self.ctx.metrics.errors.labels(payload.code.value if isinstance(payload, SyncopateError)
                                               else "INTERNAL").inc()
                log.info("yjs %s on %s refused: %s", op, self.key, payload)
                self._failed(op, payload)

        self.ctx.request(Command(PLAYLIST, self.pid, op, args, self.conn.principal, origin=self.origin), done)

    def _failed(self, op: str, err) -> None:
        """y-websocket has no acknowledgements: a client never learns that an update was lost, and
        every later update of that client then waits on the server for the missing one. So when a
        sync message can't be applied for a transient reason (the host crashed or restarted, the
        store failed, no answer in time), close the socket (1012): the provider reconnects and the
        sync handshake exchanges exactly what either side lacks. Access taken away meanwhile:
        NOT_FOUND closes for good (4403); FORBIDDEN makes the socket read-only (a viewer now)."""
        code = err.code if isinstance(err, SyncopateError) else None
        if code is None or err.retryable:
            self.restart(f"{op} failed: {err}")
        elif code == ErrorCode.NOT_FOUND:
            self.conn.send_frame(yjs.permission_denied(err.message))
            self.conn.close(4403, "refused")
        elif code == ErrorCode.FORBIDDEN and op == "yjs_update":
            self.readonly = True

    def restart(self, why: str) -> None:
        if self.conn.closed or self.restarting:
            return
        self.restarting = True
        log.info("yjs socket %s on %s closed for a fresh sync: %s", self.conn.id, self.key, why)
        self.conn.close(1012, "service restart")

    def send_message(self, msg: dict) -> None:
        """What the gateway sends app connections as JSON/msgpack messages. The one a Yjs socket gets
        is `resync` (gateway/runner.py, after a host restart): the host lost this socket's
        subscription with the pushes and updates in flight, so start the sync over."""
        if isinstance(msg, dict) and msg.get("type") == MessageType.RESYNC.value:
            self.restart("the playlist's host restarted")
        else:
            log.debug("message %r not sent on a Yjs socket", msg.get("type") if isinstance(msg, dict) else msg)

    def _awareness(self, payload: bytes) -> None:
        try:
            entries = yjs.parse_awareness(payload)
        except SyncopateError:
            return
        for client, clock, _ in entries:
            self.clients[client] = max(clock, self.clients.get(client, 0))
        self._relay(payload)

    def _relay(self, payload: bytes) -> None:
        self.ctx.request(Command(PLAYLIST, self.pid, "relay", {"type": AWARENESS, "payload": {"update": payload}},
                                 SYSTEM, origin=self.origin), lambda ok, p, v: None)

    def on_push(self, conn: Connection, item: tuple) -> None:
        _, key, version, mtype, payload, to, close, fresh = item
        if mtype == CHANGED:
            update = payload.get("update") if isinstance(payload, dict) else None
            if update:
                conn.send_frame(yjs.update(update))
        elif mtype == AWARENESS:
            data = payload.get("update") if isinstance(payload, dict) else None
            if data:
                try:
                    self.cache.merge(yjs.parse_awareness(data))
                except SyncopateError:
                    return
                conn.send_frame(yjs.awareness(data))

    def closed(self) -> None:
        self.conn.closed = True
        if self.clients:      # tell the others these clients left (what y-websocket's server does)
            self._relay(yjs.encode_awareness([(c, k + 1, "null") for c, k in self.clients.items()]))
        for key in self.ctx.hub.remove(self.conn):
            self.ctx.tell(PLAYLIST, self.pid, "unsubscribe", {}, origin=self.origin)
            self.ctx.yjs_awareness.pop(key, None)
