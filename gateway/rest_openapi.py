"""GET /v1/openapi.json: the OpenAPI 3.1 description of everything under /v1 (gateway/openapi.py).
Open: no token needed (gateway/middleware.py OPEN_PATHS). The document is built once, when the app
is (reading gateway/openapi_spotify.json off the event loop)."""
from __future__ import annotations

from aiohttp import web

from gateway.openapi import document_bytes

PATH = "/v1/openapi.json"
DOCUMENT = web.AppKey("syncopate_openapi", bytes)


def setup(app: web.Application) -> None:
    app[DOCUMENT] = document_bytes()
    app.router.add_get(PATH, openapi_json)      # one path, no trailing-slash twin: open paths match exactly


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT], content_type="application/json",
                        headers={"Cache-Control": "public, max-age=300"})
