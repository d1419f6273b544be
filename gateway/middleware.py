"""REST middlewares: Spotify's error shape for every failure, bearer auth, scopes (gateway/scopes.py),
per-user rate limit."""
from __future__ import annotations

import logging
import time

from aiohttp import web

from gateway import scopes
from gateway.auth import bearer
from gateway.http import CTX, IDEMPOTENCY_KEY, OP_ID, PRINCIPAL, error_response, socket_query
from gateway.ratelimit import TokenBucket
from protocols.errors import ErrorCode, SyncopateError

log = logging.getLogger("syncopate.rest")
OPEN_PATHS = ("/healthz", "/metrics", "/", "/authorize", "/api/token", "/favicon.ico", "/v1/openapi.json")
OPEN_PREFIXES = ("/web/",)                        # the web player's static files
SELF_AUTH_PREFIXES = ("/v1/ws", "/v1/yjs/")      # websockets authenticate themselves (header or ?token=)
OPERATOR_PREFIX = "/admin/"                      # operator tokens only (gateway/rest_users.py)


@web.middleware
async def errors(request: web.Request, handler):
    ctx = request.app[CTX]
    t0 = time.perf_counter()
    try:
        resp = await handler(request)
    except SyncopateError as err:
        resp = error_response(err, headers=_retry_after(err))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.FRAME_TOO_LARGE,
                414: ErrorCode.URI_TOO_LONG, 431: ErrorCode.HEADERS_TOO_LARGE}.get(exc.status, ErrorCode.BAD_REQUEST)
        resp = error_response(SyncopateError(code, exc.reason or code.value))
        resp.set_status(exc.status)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        resp = error_response(SyncopateError(ErrorCode.INTERNAL, "internal server error"))
    op = request.get(OP_ID)
    if op is not None and not resp.prepared:
        # the op id this request's mutation carried, made here when the client sent none: a
        # client retrying after TIMEOUT or a dropped connection sends it back to be applied once
        resp.headers[IDEMPOTENCY_KEY] = op
    ctx.metrics.http_requests.labels(str(resp.status)).inc()
    if not request.path.startswith(SELF_AUTH_PREFIXES):
        ctx.metrics.request_seconds.labels("rest").observe(time.perf_counter() - t0)
    return resp


def _retry_after(err: SyncopateError) -> dict | None:
    if err.code == ErrorCode.RATE_LIMITED:
        secs = max(1, int(err.details.get("retry_after_ms", 1000) / 1000 + 0.999))
        return {"Retry-After": str(secs)}
    return None


def _user_socket(request: web.Request, ctx) -> None:
    """Refuse an app-only or operator token on a socket path. A function of its own so that nothing
    of it (the token, its principal) stays referenced from the middleware's frame, which lives as
    long as the socket."""
    token = bearer(request.headers.get("Authorization")) or socket_query(request).get("token")
    if token:
        p = ctx.auth.verify(token)
        if p.app_only or p.operator:
            raise SyncopateError(ErrorCode.UNAUTHORIZED, "a websocket needs a user token")


def auth(buckets: dict):
    # Not a coroutine itself: it answers the handler's awaitable (aiohttp awaits what a middleware
    # returns), so an open socket holds no frame of this middleware for its whole life.
    @web.middleware
    def middleware(request: web.Request, handler):
        path = request.path
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return handler(request)
        ctx = request.app[CTX]
        if path.startswith(SELF_AUTH_PREFIXES):
            # the socket checks its token itself; only users' tokens may open one
            _user_socket(request, ctx)
            return handler(request)
        return rest(request, handler, ctx)

    async def rest(request: web.Request, handler, ctx):
        path = request.path
        principal = ctx.auth.verify(bearer(request.headers.get("Authorization")))
        if path.startswith(OPERATOR_PREFIX) != principal.operator:
            raise SyncopateError(ErrorCode.UNAUTHORIZED if principal.operator else ErrorCode.FORBIDDEN,
                                 "an operator token is for the /admin API only" if principal.operator
                                 else "the /admin API needs an operator token (syncopate user|app ...)")
        scopes.enforce(scopes.rest_rule(request.method, path), principal)
        bucket = buckets.get(principal.user_id)
        if bucket is None:
            if len(buckets) > 100_000:
                buckets.clear()
            bucket = buckets[principal.user_id] = TokenBucket(ctx.config.rest_rate, ctx.config.rest_burst)
        wait = bucket.take()
        if wait:
            raise SyncopateError(ErrorCode.RATE_LIMITED, "too many requests", retry_after_ms=int(wait * 1000) + 1)
        await ctx.check_session(principal)
        request[PRINCIPAL] = principal
        return await handler(request)
    return middleware
