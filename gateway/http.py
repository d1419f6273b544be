"""Small helpers every REST module uses: Spotify error bodies, JSON bodies, paging, routes.

REST modules (gateway/rest_*.py) each expose `setup(app: web.Application) -> None` and add their
routes with `add_route`, which registers the path with and without a trailing slash (Spotify
clients send both). Handlers reach the cluster through `ctx(request).call(...)` and the caller
through `principal(request)`; a SyncopateError raised anywhere becomes Spotify's error shape in
gateway/middleware.py.

Every mutation carries an op id (`mutation_op_id`): the client's `Idempotency-Key` header, or one
made for the request. The host applies an op id once, so a mutation the gateway gave up on
(TIMEOUT, HOST_UNAVAILABLE) and that committed anyway is not applied a second time by a retry with
the same key; the answer's `Idempotency-Key` header tells a client that sent none which key that is.
"""
from __future__ import annotations

import uuid
from urllib.parse import parse_qsl
from typing import Any, Awaitable, Callable

from aiohttp import web

from actors.entity import Principal
from protocols.codec import JSON, dumps_json
from protocols.decode import decode_value
from protocols.errors import ErrorCode, SyncopateError

CTX = web.AppKey("syncopate_ctx", object)
PRINCIPAL = web.RequestKey("syncopate_principal", Principal)
OP_ID = web.RequestKey("syncopate_op_id", str)
IDEMPOTENCY_KEY = "Idempotency-Key"
MAX_OP_ID = 128                # as on the websocket (protocols/codec.py)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def ctx(request: web.Request):
    """The GatewayContext (gateway/context.py): .call(), .catalog, .config."""
    return request.app[CTX]


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def mutation_op_id(request: web.Request) -> str:
    """The op id of this request's mutation: the client's Idempotency-Key, else a random one made
    once per request (a retry of a request that sent no key is a new request; one that echoes the
    answer's Idempotency-Key header is the same one). An over-long key is refused, not truncated:
    two keys sharing their first 128 characters would otherwise be one operation."""
    op = request.get(OP_ID)
    if op is None:
        key = request.headers.get(IDEMPOTENCY_KEY)
        if key is None:
            op = f"rest-{uuid.uuid4().hex}"
        elif 0 < len(key) <= MAX_OP_ID:
            op = key
        else:
            raise SyncopateError(ErrorCode.BAD_REQUEST, f"Idempotency-Key must be 1 to {MAX_OP_ID} characters")
        request[OP_ID] = op
    return op


def socket_query(request: web.Request) -> dict[str, str]:
    """A websocket upgrade's query parameters (the first value of each name), parsed without being
    cached: `request.query` is kept on the request's URL for as long as the request lives, and a
    socket's request lives as long as the socket, the token in its query included (a second copy
    of the token per open socket). The same pairs as yarl's `URL.query` (its documented equal,
    parse_qsl with blank values kept)."""
    out: dict[str, str] = {}
    for name, value in parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True):
        out.setdefault(name, value)
    return out


def add_route(app: web.Application, method: str, path: str, handler: Handler) -> None:
    app.router.add_route(method, path, handler)
    app.router.add_route(method, path.rstrip("/") + "/", handler)


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=dumps_json(data), status=status,
                        content_type="application/json", headers=headers)


def no_content() -> web.Response:
    return web.Response(status=204)


def error_response(err: SyncopateError, headers: dict | None = None) -> web.Response:
    return json_response(err.to_spotify(), status=err.status, headers=headers)


def request_json(raw: bytes) -> Any:
    """A REST body through the same decoding layer as websocket frames (protocols/decode.py: depth,
    sizes, plain values only); a violation is Spotify's 400."""
    try:
        return decode_value(raw, JSON)
    except SyncopateError as err:
        raise SyncopateError(ErrorCode.BAD_REQUEST, f"malformed JSON body: {err.message}") from None


async def json_body(request: web.Request, *, required: bool = False) -> dict:
    """The request body as a JSON object ({} when empty and not required). Malformed -> 400."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise SyncopateError(ErrorCode.BAD_REQUEST, "a JSON body is required")
        return {}
    body = request_json(raw)
    if not isinstance(body, dict):
        raise SyncopateError(ErrorCode.BAD_REQUEST, "the JSON body must be an object")
    return body


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        val = int(raw)
    except ValueError:
        raise SyncopateError(ErrorCode.BAD_REQUEST, f"{name} must be an integer") from None
    if not lo <= val <= hi:
        raise SyncopateError(ErrorCode.BAD_REQUEST, f"{name} must be between {lo} and {hi}")
    return val


def list_param(request: web.Request, name: str, *, max_items: int, required: bool = True) -> list[str]:
    raw = request.query.get(name, "")
    items = [x for x in raw.split(",") if x]
    if required and not items:
        raise SyncopateError(ErrorCode.BAD_REQUEST, f"missing {name}")
    if len(items) > max_items:
        raise SyncopateError(ErrorCode.BAD_REQUEST, f"at most {max_items} {name}")
    return items


def base_url(request: web.Request) -> str:
    """Absolute base for `href`/`next`/`previous`, e.g. http://127.0.0.1:8080/v1"""
    return f"{request.scheme}://{request.host}/v1"


def paging(request: web.Request, items: list, total: int, offset: int, limit: int, path: str | None = None,
           extra_query: str = "") -> dict:
    """Spotify's offset paging object with absolute next/previous URLs."""
    href_base = f"{request.scheme}://{request.host}{path or request.path}"
    q = f"&{extra_query}" if extra_query else ""

    def url(off: int) -> str:
        return f"{href_base}?offset={off}&limit={limit}{q}"

    return {
        "href": url(offset),
        "items": items,
        "limit": limit,
        "next": url(offset + limit) if offset + limit < total else None,
        "offset": offset,
        "previous": url(max(0, offset - limit)) if offset > 0 else None,
        "total": total,
    }
