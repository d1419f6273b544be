"""Builds the aiohttp application: middlewares, operator endpoints, the websockets, REST modules."""
from __future__ import annotations

import importlib
import logging

from aiohttp import web

from gateway import middleware
from gateway.context import GatewayContext
from gateway.http import CTX, json_response
from gateway.ws import websocket

log = logging.getLogger("syncopate.gateway")

# REST and extra websocket modules, each with setup(app). Listed here so a reader finds them all.
MODULES = ("gateway.rest_catalog", "gateway.rest_playlists", "gateway.rest_player", "gateway.rest_library",
           "gateway.rest_sessions", "gateway.yjs")


def build_app(ctx: GatewayContext) -> web.Application:
    app = web.Application(middlewares=[middleware.errors, middleware.auth({})],
                          client_max_size=ctx.config.max_frame_bytes)
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
