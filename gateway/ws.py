"""`GET /v1/ws`: the client websocket. Where every client frame enters the server.

frame -> size / rate checks -> protocols.codec.decode_frame -> ROUTES[type] -> Command -> host
The answer (result or error, echoing the request id) comes back in the client's encoding; pushes
for the connection's subscriptions arrive on the same socket.
"""
from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSMsgType, web

from actors.entity import Command
from gateway.auth import bearer
from gateway.context import GatewayContext
from gateway.http import CTX, error_response
from gateway.hub import Connection
from gateway.ratelimit import TokenBucket
from protocols import codec
from protocols import messages as m
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import MessageType as T
from protocols.uris import keyed_id
from protocols.uris import new_id as new_playlist_id

log = logging.getLogger("syncopate.ws")
ENTITY_KINDS = (m.PLAYLIST, m.DEVICE_GROUP, m.SESSION)


def authenticate(request: web.Request, ctx: GatewayContext):
    token = bearer(request.headers.get("Authorization")) or request.query.get("token")
    return ctx.auth.verify(token)


async def websocket(request: web.Request) -> web.StreamResponse:
    ctx: GatewayContext = request.app[CTX]
    try:
        principal = authenticate(request, ctx)
        await ctx.check_session(principal)    # a signed-out device's token
    except SyncopateError as err:
        return error_response(err)            # refused before the upgrade: plain HTTP 401
    cfg = ctx.config
    # Hard cap well above the soft limit: an oversize frame within it gets an error frame and the
    # connection lives on; beyond it aiohttp closes with 1009 rather than buffer without bound.
    ws = web.WebSocketResponse(heartbeat=cfg.heartbeat_s, max_msg_size=cfg.max_frame_bytes * 4,
                               compress=False)   # small frames: deflate costs both ends more than it saves
    await ws.prepare(request)
    client = request.query.get("client", "app")[:32]
    device_id = request.query.get("device_id") or principal.device_id
    conn = Connection(ctx.hub.new_id(), principal, encoding=codec.JSON, client=client, device_id=device_id,
                      send_raw=lambda f: ws.send_str(f) if isinstance(f, str) else ws.send_bytes(f),
                      close=lambda code, reason: ws.close(code=code, message=reason.encode()))
    ctx.hub.add(conn)
    ctx.metrics.connections.labels(client).inc()
    origin = (ctx.gateway_id, conn.id)
    session = WsSession(ctx, conn, origin)
    try:
        await session.open()
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                session.frame(msg.data, codec.JSON)
            elif msg.type == WSMsgType.BINARY:
                session.frame(msg.data, codec.MSGPACK)
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        session.closed()
        ctx.metrics.connections.labels(client).dec()
    return ws


class WsSession:
    def __init__(self, ctx: GatewayContext, conn: Connection, origin: tuple[str, str]) -> None:
        self.ctx = ctx
        self.conn = conn
        self.origin = origin
        self.bucket = TokenBucket(ctx.config.ws_rate, ctx.config.ws_burst)

    async def open(self) -> None:
        """Register with the user's session (presence), follow it (library and session pushes), then
        say hello: a client that has its hello is registered and subscribed. A signed-out device
        is refused here and the socket closed."""
        conn, p = self.conn, self.conn.principal
        try:
            await self.ctx.call(m.SESSION, p.user_id, "connect",
                                {"conn": f"{self.ctx.gateway_id}/{conn.id}", "device_id": conn.device_id,
                                 "client": conn.client, "gateway": self.ctx.gateway_id, "iat": p.issued_at},
                                origin=self.origin)
        except SyncopateError as err:
            if err.code == ErrorCode.SESSION_ENDED:
                conn.send(codec.error(None, err))
                conn.close(4001, "session ended")
                return
            log.warning("session connect failed for %s: %s", p.user_id, err)
        subscribed = asyncio.get_running_loop().create_future()
        self._subscribe(None, f"{m.SESSION}:{p.user_id}", None, reply=False,
                        done=lambda ok: subscribed.done() or subscribed.set_result(ok))
        if not await subscribed:
            # e.g. the store was unreachable: keep trying in the background, or this connection
            # would never see its library and presence pushes.
            log.warning("session subscribe failed for %s; retrying", p.user_id)
            _spawn(self._resubscribe_session())
        conn.send({"type": T.HELLO.value, "payload": {"user_id": p.user_id, "product": p.product,
                                                      "connection_id": conn.id, "gateway": self.ctx.gateway_id,
                                                      "server_time_ms": int(time.time() * 1000)}})

    async def _resubscribe_session(self) -> None:
        key = f"{m.SESSION}:{self.conn.principal.user_id}"
        delay = 0.25
        while not self.conn.closed and key not in self.conn.subs:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            done = asyncio.get_running_loop().create_future()
            self._subscribe(None, key, None, reply=False, done=lambda ok: done.done() or done.set_result(ok))
            if await done:
                return

    def closed(self) -> None:
        conn, ctx = self.conn, self.ctx
        conn.closed = True
        for key in ctx.hub.remove(conn):
            kind, _, eid = key.partition(":")
            ctx.tell(kind, eid, "unsubscribe", {}, origin=self.origin)
        uid = conn.principal.user_id
        ctx.tell(m.SESSION, uid, "disconnect", {"conn": f"{ctx.gateway_id}/{conn.id}"})
        if conn.registered_device:
            ctx.tell(m.DEVICE_GROUP, uid, "disconnect", {"device_id": conn.registered_device,
                                                        "conn": f"{ctx.gateway_id}/{conn.id}"})

    # -- one frame -----------------------------------------------------------------------------
    def frame(self, data, encoding: str) -> None:
        ctx, conn = self.ctx, self.conn
        conn.encoding = encoding            # answer in the encoding the client uses
        ctx.metrics.frames_in.labels(encoding).inc()
        size = len(data) if isinstance(data, (bytes, bytearray)) else len(data.encode())
        if size > ctx.config.max_frame_bytes:
            return self._error(None, SyncopateError(ErrorCode.FRAME_TOO_LARGE,
                                                    f"frame of {size} bytes exceeds {ctx.config.max_frame_bytes}"))
        wait = self.bucket.take()
        if wait:
            return self._error(None, SyncopateError(ErrorCode.RATE_LIMITED, "too many frames",
                                                    retry_after_ms=int(wait * 1000) + 1))
        try:
            env = codec.decode_frame(data, encoding)
        except SyncopateError as err:
            return self._error(err.details.pop("id", None), err)
        t0 = time.perf_counter()
        try:
            self._dispatch(env, t0)
        except SyncopateError as err:
            self._error(env.id, err)

    def _error(self, rid, err: SyncopateError) -> None:
        self.ctx.metrics.errors.labels(err.code.value).inc()
        self.conn.send(codec.error(rid, err))

    def _answer(self, rid, t0: float):
        def callback(ok, payload, version):
            self.ctx.metrics.request_seconds.labels("ws").observe(time.perf_counter() - t0)
            if ok:
                self.conn.send(codec.result(rid, payload, version))
            else:
                self._error(rid, payload)
        return callback

    def _dispatch(self, env, t0: float) -> None:
        conn, ctx = self.conn, self.ctx
        if env.type == T.PING:
            conn.send({"id": env.id, "type": T.PONG.value, "payload": {"server_time_ms": int(time.time() * 1000)}})
            return
        if env.type in (T.SUBSCRIBE, T.UNSUBSCRIBE):
            key = env.payload.get("entity")
            if not isinstance(key, str) or key.partition(":")[0] not in ENTITY_KINDS or not key.partition(":")[2]:
                raise SyncopateError(ErrorCode.INVALID_FIELD, "entity must be '<playlist|devicegroup|session>:<id>'")
            if env.type == T.UNSUBSCRIBE:
                if ctx.hub.unsubscribe(conn, key):
                    kind, _, eid = key.partition(":")
                    ctx.tell(kind, eid, "unsubscribe", {}, origin=self.origin)
                conn.send(codec.result(env.id, None))
                return
            since = env.payload.get("since")
            if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
                raise SyncopateError(ErrorCode.INVALID_FIELD, "since must be a version (integer >= 0)")
            self._subscribe(env.id, key, since, reply=True, t0=t0)
            return
        route = m.ROUTES[env.type]
        args = dict(env.payload)
        if env.type == T.PLAYLIST_CREATE and "id" not in args:
            # a client may choose one (offline creation); else a retry with the same op id must
            # reach the same entity, so the id derives from it
            args["id"] = keyed_id(conn.principal.user_id, env.op_id) if env.op_id else new_playlist_id()
        if route.id_field is None:
            entity_id = conn.principal.user_id
        else:
            entity_id = args.pop(route.id_field, None)
            if not isinstance(entity_id, str) or not 0 < len(entity_id) <= 64:
                raise SyncopateError(ErrorCode.INVALID_FIELD, f"payload.{route.id_field} must name the {route.kind}")
        if route.kind == m.DEVICE_GROUP:        # set by the gateway alone (GatewayContext.prepare)
            args.pop("context_entries", None)
            args.pop("context_snapshot_id", None)
        cmd = Command(route.kind, entity_id, route.op, args, conn.principal, op_id=env.op_id, origin=self.origin)
        answer = self._answer(env.id, t0)
        if env.type == T.DEVICE_REGISTER:
            # The host registers this gateway's interest while handling the register itself, so a
            # device registering beside others misses none of their pushes.
            cmd.follow = True
            answer = self._after_register(answer, args.get("device_id"))
        if ctx.needs_prepare(cmd):
            _spawn(self._prepared(cmd, answer))
            return
        ctx.request(cmd, answer)

    async def _prepared(self, cmd: Command, answer) -> None:
        try:
            reply, version = await self.ctx.call_versioned(cmd)
        except SyncopateError as err:
            answer(False, err, 0)
        else:
            answer(True, reply, version)

    def _after_register(self, answer, device_id):
        def callback(ok, payload, version):
            if ok:
                self.conn.registered_device = device_id
                # The device follows its group from this answer on (same stream turn as the pushes).
                self.ctx.hub.subscribe(self.conn, f"{m.DEVICE_GROUP}:{self.conn.principal.user_id}", version)
            answer(ok, payload, version)
        return callback

    def _subscribe(self, rid, key: str, since, *, reply: bool, t0: float | None = None, done=None) -> None:
        kind, _, eid = key.partition(":")
        conn = self.conn

        def callback(ok, payload, version):
            if ok:
                self.ctx.hub.subscribe(conn, key, version)   # synchronously: the next push finds it
                if reply:
                    conn.send(codec.result(rid, payload, version))
            elif reply:
                self._error(rid, payload)
            if done is not None:
                done(ok)

        args = {} if since is None else {"since": since}
        self.ctx.request(Command(kind, eid, "subscribe", args, conn.principal, origin=self.origin), callback)


def _spawn(coro):
    task = asyncio.get_running_loop().create_task(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return task


_BACKGROUND: set = set()
