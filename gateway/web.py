"""The web player: static files (gateway/static/: plain ES modules, no build step, no CDN) at `/`
and `/web/`. It signs in through /authorize as the built-in public client (PKCE; gateway/oauth.py
WEB_CLIENT_ID) and is a Connect device on /v1/ws."""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
                                      "media-src 'self' blob:; "
                                      "style-src 'self'; script-src 'self'; frame-ancestors 'none'"}


FILES = {"app.js": "text/javascript", "style.css": "text/css"}      # everything under /web/: a fixed list


def setup(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/web/{name}", asset)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=HEADERS)


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in FILES:
        raise web.HTTPNotFound(reason=f"no file {name[:64]}")
    return web.FileResponse(STATIC / name, headers={**HEADERS, "Content-Type": FILES[name]})
