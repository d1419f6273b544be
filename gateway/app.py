"""Builds the aiohttp application: middlewares, operator endpoints, the websockets, REST modules.

`GatewayRunner` serves it: a web.AppRunner whose connections answer the errors aiohttp's HTTP
parser raises (before any handler or middleware runs: an over-long request line or header, a
malformed request) in Spotify's error shape, like every other error the gateway emits.
"""
from __future__ import annotations

import importlib
import logging

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.http_writer import StreamWriter
from aiohttp.web_protocol import RequestHandler

from gateway import middleware
from gateway.context import GatewayContext
from gateway.http import CTX, error_response, json_response
from gateway.keytables import prime
from gateway.ws import websocket
from protocols.errors import ErrorCode, SyncopateError

log = logging.getLogger("syncopate.gateway")

# REST and extra websocket modules, each with setup(app). Listed here so a reader finds them all.
MODULES = ("gateway.rest_catalog", "gateway.rest_playlists", "gateway.rest_player", "gateway.rest_events",
           "gateway.rest_library",
           "gateway.rest_sessions", "gateway.yjs", "gateway.rest_users", "gateway.rest_hosts", "gateway.oauth", "gateway.web",
           "gateway.rest_openapi", "gateway.data_rights", "gateway.edge")


# The HTTP parser's limits. aiohttp's LineTooLong carries only the limit it hit, not which line it
# was, so the two limits differ on purpose (by one byte): that is how handle_error below tells an
# over-long request line (414) from an over-long header (431).
MAX_REQUEST_LINE = 8190          # aiohttp's default; the request target (path and query) with the C parser
MAX_HEADER_FIELD = 8191          # name and value of one header together
MAX_HEADERS = 128                # aiohttp's default

# aiohttp rounds a timer of more than `timeout_ceil_threshold` seconds (default 5) up to a whole
# second of the loop's clock (helpers.calculate_timeout_when), to coalesce wakeups. For the
# websocket heartbeat (20 s) that puts every socket's ping, and every reschedule of one whose peer
# sent data, on the same instant: with 10,000 sockets a gateway ran ~500 of them at each whole
# second, a 20-45 ms stall of its loop once a second that the pushes and acks queued behind
# (docs/performance.md, 2026-12-06). No rounding: each socket's timer falls when its own data did.
TIMEOUT_CEIL_THRESHOLD = float("inf")


def build_app(ctx: GatewayContext) -> web.Application:
    app = web.Application(middlewares=[middleware.errors, middleware.auth({})],
                          client_max_size=ctx.config.max_frame_bytes,
                          handler_args={"max_line_size": MAX_REQUEST_LINE, "max_field_size": MAX_HEADER_FIELD,
                                        "max_headers": MAX_HEADERS})
    app[CTX] = ctx
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/ws", websocket)
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            log.debug("module %s not present", name)
            continue
        mod.setup(app)
    return app


async def healthz(request: web.Request) -> web.Response:
    ctx: GatewayContext = request.app[CTX]
    report = await ctx.health() if ctx.health else {"ok": True}
    return json_response(report, status=200 if report.get("ok") else 503)


async def metrics(request: web.Request) -> web.Response:
    ctx: GatewayContext = request.app[CTX]
    if ctx.health is not None:
        try:
            await ctx.health()            # refreshes the host stats the metrics include
        except Exception:
            pass
    return web.Response(body=ctx.metrics.render(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type": "text/plain; version=0.0.4"})


# -- errors raised before the application sees a request ----------------------------------------

def edge_error(status: int, exc: BaseException | None, max_line_size: int, max_field_size: int) -> SyncopateError:
    """The SyncopateError for an error aiohttp's connection handler answers itself: a parse error
    (status 400 from the parser), a handler timeout (504) or an exception no middleware caught (500)."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == max_line_size:
            return SyncopateError(ErrorCode.URI_TOO_LONG, f"the request line is longer than {limit} bytes")
        if limit == max_field_size:
            return SyncopateError(ErrorCode.HEADERS_TOO_LARGE, f"a header is longer than {limit} bytes")
        return SyncopateError(ErrorCode.BAD_REQUEST, f"a line is longer than {limit} bytes")
    if isinstance(exc, BadHttpMessage) and "too many headers" in exc.message.lower():
        return SyncopateError(ErrorCode.HEADERS_TOO_LARGE, "too many headers")
    if status == 504:
        return SyncopateError(ErrorCode.TIMEOUT, "the request timed out")
    if status >= 500:
        return SyncopateError(ErrorCode.INTERNAL, "internal server error")
    reason = exc.message if isinstance(exc, HttpProcessingError) and exc.message else "malformed HTTP request"
    return SyncopateError(ErrorCode.BAD_REQUEST, reason)


class SpotifyRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its own errors in Spotify's error shape.

    RequestHandler.handle_error builds a text/plain body; a Spotify client parsing `error.status`
    from every non-2xx answer (spotipy, tekore) then fails on the body instead of reporting the
    error. The status and the closing of the connection are aiohttp's, the body is ours."""

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        err = edge_error(status, exc, self.max_line_size, self.max_field_size)
        if err.status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:        # a client's malformed request: routine on a public port, not the server's fault
            log.debug("refused a malformed request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:
            # part of a response is on the wire already: no second response can follow
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        resp = error_response(err)
        resp.force_close()
        return resp

    def set_parser(self, parser, data_received_cb=None) -> None:
        """An accepted websocket upgrade: from here on every byte goes to the websocket reader, so
        the HTTP request parser (760 B per open socket) is let go, as aiohttp does when the
        connection is lost (its loop tests the attribute for None), and so is the queue of parsed
        requests (another 760 B): the upgrade was the last request the parser gave (it stops at
        one), so the queue is empty and nothing can be added to it. An empty tuple answers the
        loop's emptiness test the same way, and an append would fail loudly rather than queue a
        request on a websocket. tests/test_gateway_input.py and every websocket test exercise it."""
        super().set_parser(parser, data_received_cb)
        self._parser = None
        if not self._messages:
            self._messages = ()


# Each connection's HTTP writer assigns aiohttp's class-level defaults (its sizes, `_eof`) on
# first use, after a burst of connections too late for the shared key table (gateway/keytables.py):
# 464 B of dict per open socket. Assigned once here, before any connection exists.
prime(lambda: StreamWriter(None, None), AbstractStreamWriter, StreamWriter)


class _SpotifyServer(web.Server):
    """A web.Server whose connections use SpotifyRequestHandler. It adds behaviour, no state."""

    def __call__(self) -> RequestHandler:
        return SpotifyRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """web.AppRunner serving the app through SpotifyRequestHandler connections.

    Application._make_handler builds a plain web.Server and offers no hook for the connection
    class, so the server it builds (with the app's handler_args, request factory and loop) is
    re-classed to _SpotifyServer, which differs only in the handler class it instantiates.
    tests/test_gateway_input.py pins the behaviour, so an aiohttp upgrade that changes it fails there.

    Its connections round no timer to a whole second (TIMEOUT_CEIL_THRESHOLD; tests/test_ws_inbox.py)."""

    def __init__(self, app: web.Application, **kwargs) -> None:
        kwargs.setdefault("timeout_ceil_threshold", TIMEOUT_CEIL_THRESHOLD)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _SpotifyServer
        return server
