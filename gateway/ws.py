"""`GET /v1/ws`: the client websocket. Where every client frame enters the server.

frame -> size / rate checks -> protocols.codec.decode_frame -> ROUTES[type] -> Command -> host
The answer (result or error, echoing the request id) comes back in the client's encoding; pushes
for the connection's subscriptions arrive on the same socket.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from aiohttp import WSMsgType, web

from actors.entity import Command
from gateway.auth import bearer
from gateway.context import GatewayContext
from gateway.http import CTX, error_response, socket_query
from gateway.hub import CLOSE_TOKEN_EXPIRED, Connection
from gateway.inbox import InboxResponse
from gateway.ratelimit import TokenBucket
from gateway.scopes import check_ws
from gateway.wsframes import FrameWriter
from protocols import codec
from protocols import messages as m
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import MessageType as T
from protocols.uris import keyed_id
from protocols.uris import new_id as new_playlist_id
from protocols.wire import Reply

log = logging.getLogger("syncopate.ws")
ENTITY_KINDS = (m.PLAYLIST, m.DEVICE_GROUP, m.SESSION)
CLIENT_KINDS = frozenset({"app", "web", "speaker", "tv", "car", "sim", "bench", "mobile", "desktop"})


async def upgrade(request: web.Request, ctx: GatewayContext, principal) -> InboxResponse:
    """The websocket upgrade of an admitted principal (app and Yjs sockets alike); a failed upgrade
    gives the principal's socket slot back (Hub.admit). The caller attaches its session to the
    socket's inbox (gateway/inbox.py): data frames reach it from the protocol's data_received."""
    cfg = ctx.config
    # Hard cap well above the soft limit: an oversize frame within it gets an error frame and the
    # connection lives on; beyond it aiohttp closes with 1009 rather than buffer without bound.
    ws = InboxResponse(heartbeat=cfg.heartbeat_s, max_msg_size=cfg.max_frame_bytes * 4,
                       compress=False)   # small frames: deflate costs both ends more than it saves
    try:
        await ws.prepare(request)
    except BaseException:
        ctx.hub.release(principal)
        raise
    return ws


def authenticate(request: web.Request, ctx: GatewayContext, query: dict[str, str] | None = None):
    query = socket_query(request) if query is None else query
    token = bearer(request.headers.get("Authorization")) or query.get("token")
    return ctx.auth.verify(token)


async def websocket(request: web.Request) -> web.StreamResponse:
    ctx: GatewayContext = request.app[CTX]
    query = socket_query(request)
    try:
        principal = authenticate(request, ctx, query)
        await ctx.check_session(principal)    # a signed-out device's token
        ctx.hub.admit(principal)              # sockets per user
    except SyncopateError as err:
        return error_response(err)            # refused before the upgrade: plain HTTP 401 / 429
    ws = await upgrade(request, ctx, principal)
    client = query.get("client", "app")[:32]
    device_id = (query.get("device_id") or principal.device_id or None)
    device_id = device_id[:64] if device_id else None
    del query                     # this frame lives as long as the socket: not the token's copy
    frames = FrameWriter(ws)
    conn = ctx.new_connection(principal, encoding=codec.JSON, client=client, device_id=device_id,
                              send_raw=frames.send_raw, send_many=frames.write, write_now=frames.write_now,
                              drain=frames.drain, close=frames.close)
    # the metric's label is one of a few known kinds: a client-chosen string would let one client
    # create metric series (memory) without bound
    kind = client if client in CLIENT_KINDS else "other"
    ctx.metrics.connections.labels(kind).inc()
    session = WsSession(ctx, conn)
    try:
        await session.open()
        # Frames that arrived while the session opened are handed on first, in order; from here on
        # each is answered where it is read. The loop below sees the rest: aiohttp's close, ping
        # and error messages, and ends the socket.
        ws.inbox.attach(session.on_frame)
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
    finally:
        session.closed()
        ctx.metrics.connections.labels(kind).dec()
    return ws


class WsSession:
    __slots__ = ("_expiry", "bucket", "conn", "ctx", "inflight", "inflight_subscribes", "origin", "subs")

    def __init__(self, ctx: GatewayContext, conn: Connection) -> None:
        self.ctx = ctx
        self.conn = conn
        self.subs = ctx.subscriptions
        self.origin = self.subs.address(conn)
        self.bucket = TokenBucket(ctx.config.ws_rate, ctx.config.ws_burst)
        self._expiry: asyncio.TimerHandle | None = None
        self.inflight = 0              # requests sent to hosts and not yet answered
        self.inflight_subscribes = 0   # of which subscribes (whose answers can be a whole playlist)

    async def open(self) -> None:
        """Register with the user's session (presence), follow it (library and session pushes), then
        say hello: a client that has its hello is registered and subscribed. A signed-out device
        is refused here and the socket closed."""
        conn, p = self.conn, self.conn.principal
        self._arm_expiry()
        try:
            await self.ctx.call(m.SESSION, p.user_id, "connect",
                                {"conn": str(self.origin), "device_id": conn.device_id,
                                 "client": conn.client, "gateway": self.ctx.gateway_id, "iat": p.issued_at},
                                origin=self.origin)
        except SyncopateError as err:
            if err.code == ErrorCode.SESSION_ENDED:
                conn.send(codec.error(None, err))
                conn.close(4001, "session ended")
                return
            log.warning("session connect failed for %s: %s", p.user_id, err)
        key = f"{m.SESSION}:{p.user_id}"
        first: asyncio.Future = asyncio.get_running_loop().create_future()
        self.subs.subscribe(conn, key, on_reply=lambda r: first.done() or first.set_result(r))
        reply = await first
        if not reply.ok and reply.error.retryable:
            # e.g. the store was unreachable: keep trying in the background, or this connection
            # would never see its library and presence pushes.
            log.warning("session subscribe failed for %s; retrying", p.user_id)
            self.subs.subscribe(conn, key, retry=True)
        conn.send({"type": T.HELLO.value, "payload": {"user_id": p.user_id, "product": p.product,
                                                      "connection_id": conn.id, "gateway": self.ctx.gateway_id,
                                                      "expires_at": p.expires_at,
                                                      "server_time_ms": int(time.time() * 1000)}})

    # -- the token's lifetime ------------------------------------------------------------------
    def _arm_expiry(self) -> None:
        """At the token's expiry the socket is told (auth.expired) and closed (4401), unless the
        client renewed it before with an `auth` message. Pushes stop with it: nothing reaches a
        socket whose token is no longer valid."""
        if self._expiry is not None:
            self._expiry.cancel()
        exp = self.conn.principal.expires_at
        if exp:
            delay = max(0.0, exp - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        conn = self.conn
        if conn.closed:
            return
        self.ctx.metrics.errors.labels(ErrorCode.TOKEN_EXPIRED.value).inc()
        self.subs.drop(conn)
        self.ctx.streams.drop(conn)
        conn.send({"type": T.AUTH_EXPIRED.value, "error": SyncopateError(
            ErrorCode.TOKEN_EXPIRED, "the access token expired; reconnect with a new one").to_wire()})
        conn.close(CLOSE_TOKEN_EXPIRED, "token expired")

    def _renew(self, env) -> None:
        token = env.payload.get("token")
        if not isinstance(token, str):
            raise SyncopateError(ErrorCode.INVALID_FIELD, "payload.token must be an access token")
        principal = self.ctx.auth.verify(token)
        if principal.user_id != self.conn.principal.user_id:
            raise SyncopateError(ErrorCode.FORBIDDEN, "a socket's token can only be renewed for the same user")
        self.conn.principal = principal         # a new product (a downgrade) applies from here on
        self._arm_expiry()
        self.conn.send(codec.result(env.id, {"expires_at": principal.expires_at, "product": principal.product}))

    def closed(self) -> None:
        conn, ctx = self.conn, self.ctx
        conn.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        self.subs.drop(conn)
        ctx.streams.drop(conn)
        ctx.hub.remove(conn)
        ctx.device_liveness.forget(conn)
        uid = conn.principal.user_id
        ctx.tell(m.SESSION, uid, "disconnect", {"conn": str(self.origin)})
        if conn.registered_device:
            ctx.tell(m.DEVICE_GROUP, uid, "disconnect", {"device_id": conn.registered_device,
                                                        "conn": str(self.origin)})

    # -- one frame -----------------------------------------------------------------------------
    def on_frame(self, data, is_text: bool) -> None:
        self.frame(data, codec.JSON if is_text else codec.MSGPACK)

    def frame(self, data, encoding: str) -> None:
        ctx, conn = self.ctx, self.conn
        if conn.closing:
            return
        conn.encoding = encoding            # answer in the encoding the client uses
        (ctx.metrics.frames_in_json if encoding == codec.JSON else ctx.metrics.frames_in_msgpack).inc()
        size = codec.frame_bytes(data, ctx.config.max_frame_bytes)
        if size > ctx.config.max_frame_bytes:
            return self._error(None, SyncopateError(ErrorCode.FRAME_TOO_LARGE,
                                                    f"frame of {size} bytes exceeds {ctx.config.max_frame_bytes}"))
        try:
            # Decoded before the rate check (decoding is linear and the frame is bounded), so that a
            # refusal names the request it refuses: a client can't match an error without its id.
            env = codec.decode_frame(data, encoding)
        except SyncopateError as err:
            self.bucket.take()
            return self._error(err.details.pop("id", None), err)
        wait = self.bucket.take()
        if wait:
            return self._error(env.id, SyncopateError(ErrorCode.RATE_LIMITED, "too many frames",
                                                      retry_after_ms=int(wait * 1000) + 1))
        t0 = time.perf_counter()
        try:
            if conn.principal.expires_at and time.time() >= conn.principal.expires_at and env.type != T.AUTH:
                raise SyncopateError(ErrorCode.TOKEN_EXPIRED, "the access token expired; renew it with `auth`")
            self._dispatch(env, t0)
        except SyncopateError as err:
            self._error(env.id, err)

    def _error(self, rid, err: SyncopateError) -> None:
        self.ctx.metrics.errors.labels(err.code.value).inc()
        self.conn.send(codec.error(rid, err))

    def _budget(self, subscribe: bool = False) -> None:
        """In-flight budgets: a client may not have the hosts build more answers for it at once than
        this (an answer can be a 10,000-entry playlist; two hundred at once were a gigabyte)."""
        cfg = self.ctx.config
        if self.inflight >= cfg.max_inflight_per_socket or (
                subscribe and self.inflight_subscribes >= cfg.max_inflight_subscribes_per_socket):
            self.ctx.metrics.budget_refused.labels("inflight_subscribes" if subscribe else "inflight").inc()
            raise SyncopateError(ErrorCode.RATE_LIMITED, "too many requests in flight on this socket",
                                 retry_after_ms=50)
        self.inflight += 1
        self.inflight_subscribes += subscribe

    def _answer(self, rid, t0: float, op_id: str | None = None, subscribe: bool = False,
                present: Callable[[Any], Any] | None = None):
        def callback(reply: Reply):
            self.inflight -= 1
            self.inflight_subscribes -= subscribe
            self.ctx.metrics.ws_seconds.observe(time.perf_counter() - t0)
            if reply.ok:
                payload = reply.payload if present is None else present(reply.payload)
                self.conn.send(codec.result(rid, payload, reply.version))
            else:
                err = reply.error
                if op_id is not None and err.retryable and "op_id" not in err.details:
                    # the client may retry with this op id: applied once, whatever happened to the first
                    err = SyncopateError(err.code, err.message, **err.details, op_id=op_id)
                self._error(rid, err)
        return callback

    def _dispatch(self, env, t0: float) -> None:
        conn, ctx = self.conn, self.ctx
        check_ws(conn.principal, env.type.value, env.payload)     # the token's scopes (gateway/scopes.py)
        if env.type == T.PING:
            conn.send({"id": env.id, "type": T.PONG.value, "payload": {"server_time_ms": int(time.time() * 1000)}})
            return
        if env.type == T.AUTH:
            self._renew(env)
            return
        if env.type == T.DEVICE_HEARTBEAT and ctx.device_liveness.answer(conn, env.id, env.payload):
            return                     # a live device's heartbeat: the host's answer is known here
        if env.type in (T.SUBSCRIBE, T.UNSUBSCRIBE):
            key = env.payload.get("entity")
            if not isinstance(key, str) or key.partition(":")[0] not in ENTITY_KINDS \
                    or not 0 < len(key.partition(":")[2]) <= 64:
                raise SyncopateError(ErrorCode.INVALID_FIELD, "entity must be '<playlist|devicegroup|session>:<id>'")
            if env.type == T.UNSUBSCRIBE:
                self.subs.leave(conn, key)
                conn.send(codec.result(env.id, None))
                return
            since = env.payload.get("since")
            if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
                raise SyncopateError(ErrorCode.INVALID_FIELD, "since must be a version (integer >= 0)")
            self._budget(subscribe=True)
            self.subs.subscribe(conn, key, since, on_reply=self._answer(env.id, t0, subscribe=True))
            return
        route = m.ROUTES[env.type]
        args = dict(env.payload)
        # Every command carries an op id: one the client chose, or one the gateway gives it, so a
        # retry of a command whose answer was lost (TIMEOUT, HOST_UNAVAILABLE: the error names the
        # op id) is answered from the log instead of being applied a second time.
        op_id = env.op_id or ctx.hub.new_op_id()
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
        cmd = Command(route.kind, entity_id, route.op, args, conn.principal, op_id=op_id, origin=self.origin)
        self._budget()
        present = self.ctx.ws_replies.get(route.op) if route.kind == m.DEVICE_GROUP else None
        answer = self._answer(env.id, t0, op_id, present=present)
        if env.type == T.DEVICE_REGISTER:
            # The host registers this gateway's interest while handling the register itself, so a
            # device registering beside others misses none of their pushes; the device follows its
            # group from this answer on (same stream turn as the pushes).
            cmd.follow = True
            device_id = args.get("device_id")
            as_is = self._answer(env.id, t0, op_id)        # one of the two callbacks answers (inflight once)

            def registered(reply: Reply) -> None:
                if reply.ok:
                    conn.registered_device = device_id
                    # the active device's answer carries its stream manifest, as its pushes do
                    shown = present(reply.payload) if present is not None else reply.payload
                    own = ctx.streams.personal(conn, shown)      # the keys its copy adds
                    if own is not None:
                        as_is(Reply(reply.version, {**shown, **own}))
                        return
                answer(reply)

            self.subs.join(conn, cmd, registered)
            return
        ctx.request(cmd, answer)

