"""Users: `GET /v1/me`, `GET /v1/users/{id}` in Spotify's shapes, and the operator API under /admin
(the `syncopate user|app` commands call it with an operator token; docs/oauth.md).

  GET   /v1/me                 the caller's profile; country, product, explicit_content with the
                               user-read-private scope, email with user-read-email
  GET   /v1/users/{id}         the public profile; 404 for an unknown user
  POST  /admin/users           {id, display_name?, country?, product?, email?, password_hash?,
                                explicit_content?: {filter_enabled, filter_locked}}
  PATCH /admin/users/{id}      any of the same fields
  GET   /admin/users?offset=&limit=
  POST  /admin/apps            {name, redirect_uris: [...], public?} -> the app, with client_secret once
  PATCH /admin/apps/{client_id}  {name?, redirect_uris?}
  GET   /admin/apps?offset=&limit=

A token minted by `syncopate token` for a user with no account still gets a /v1/me answer, built
from the token (display name = id, country US, no email), so scripts work without `user add`.
"""
from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid

from aiohttp import web

from actors.account import ACCOUNT, APP, DEFAULT_COUNTRY, DIRECTORY
from gateway.http import add_route, base_url, ctx, int_param, json_body, json_response, principal
from protocols.errors import ErrorCode, SyncopateError

OPEN_URL = "https://open.spotify.com"

USER_FIELDS = ("display_name", "country", "product", "email", "password_hash", "explicit_content")


def setup(app: web.Application) -> None:
    add_route(app, "GET", "/v1/me", me)
    add_route(app, "GET", "/v1/users/{user_id}", user)
    add_route(app, "POST", "/admin/users", add_user)
    add_route(app, "PATCH", "/admin/users/{user_id}", set_user)
    add_route(app, "GET", "/admin/users", list_users)
    add_route(app, "POST", "/admin/apps", add_app)
    add_route(app, "PATCH", "/admin/apps/{client_id}", set_app)
    add_route(app, "GET", "/admin/apps", list_apps)


def public_user(request: web.Request, uid: str, display_name: str | None) -> dict:
    return {"display_name": display_name, "external_urls": {"spotify": f"{OPEN_URL}/user/{uid}"},
            "followers": {"href": None, "total": 0}, "href": f"{base_url(request)}/users/{uid}", "id": uid,
            "images": [], "type": "user", "uri": f"spotify:user:{uid}"}


async def me(request: web.Request) -> web.Response:
    p = principal(request)
    try:
        acc = await ctx(request).call(ACCOUNT, p.user_id, "me", {}, principal=p)
    except SyncopateError as err:
        if err.code != ErrorCode.NOT_FOUND:
            raise
        acc = {"display_name": p.user_id, "country": DEFAULT_COUNTRY, "product": p.product, "email": None,
               "explicit_content": {"filter_enabled": False, "filter_locked": False}}
    out = public_user(request, p.user_id, acc["display_name"])
    out["account_id"] = p.user_id         # in Spotify's /me answers now (tekore 6 requires it)
    scopes = getattr(p, "scopes", frozenset())
    if "user-read-private" in scopes:
        out.update(country=acc["country"], product=acc["product"],
                   explicit_content=acc["explicit_content"])
    if "user-read-email" in scopes:
        out["email"] = acc["email"]
    return json_response(out)


async def user(request: web.Request) -> web.Response:
    uid = request.match_info["user_id"]
    if not 0 < len(uid) <= 64:
        raise SyncopateError(ErrorCode.NOT_FOUND, f"no user {uid[:64]}")
    prof = await ctx(request).call(ACCOUNT, uid, "profile", {}, principal=principal(request))
    return json_response(public_user(request, uid, prof["display_name"]))


# -- the operator API -----------------------------------------------------------------------------

def _fields(body: dict, allowed: tuple[str, ...]) -> dict:
    unknown = set(body) - set(allowed)
    if unknown:
        raise SyncopateError(ErrorCode.BAD_REQUEST, f"unknown field {sorted(unknown)[0]!r}")
    return body


async def add_user(request: web.Request) -> web.Response:
    body = await json_body(request, required=True)
    uid = body.pop("id", None)
    if not isinstance(uid, str) or not 0 < len(uid) <= 64:
        raise SyncopateError(ErrorCode.BAD_REQUEST, "id must be 1 to 64 characters")
    acc = await ctx(request).call(ACCOUNT, uid, "create", _fields(body, USER_FIELDS), op_id=f"admin-{uuid.uuid4().hex}")
    return json_response(acc, status=201)


async def set_user(request: web.Request) -> web.Response:
    body = _fields(await json_body(request, required=True), USER_FIELDS)
    acc = await ctx(request).call(ACCOUNT, request.match_info["user_id"], "update", body,
                                  op_id=f"admin-{uuid.uuid4().hex}")
    # `market=from_token` and the edge on this gateway take a new country or filter at once, the others
    # within gateway/markets.MARKET_TTL_S; the device group is told by the account itself (market_changed)
    ctx(request).markets.forget(request.match_info["user_id"])
    return json_response(acc)


async def _listing(request: web.Request, which: str, kind: str, op: str) -> web.Response:
    offset = int_param(request, "offset", 0, 0, 10_000_000)
    limit = int_param(request, "limit", 50, 1, 200)
    c = ctx(request)
    page = await c.call(DIRECTORY, which, "list", {"offset": offset, "limit": limit})
    items = await asyncio.gather(*(c.call(kind, i, op, {}) for i in page["ids"]))
    for it in items:
        it.pop("secret_hash", None)
    return json_response({"items": list(items), "total": page["total"], "offset": offset, "limit": limit})


async def list_users(request: web.Request) -> web.Response:
    return await _listing(request, "users", ACCOUNT, "me")


async def add_app(request: web.Request) -> web.Response:
    body = _fields(await json_body(request, required=True), ("name", "redirect_uris", "public"))
    public = body.get("public") is True
    client_id = secrets.token_hex(16)
    secret = None if public else secrets.token_hex(32)
    args = {"name": body.get("name"), "redirect_uris": body.get("redirect_uris"), "public": public}
    if secret:
        args["secret_hash"] = hashlib.sha256(secret.encode()).hexdigest()
    app = await ctx(request).call(APP, client_id, "create", args, op_id=f"admin-{uuid.uuid4().hex}")
    if secret:
        app["client_secret"] = secret        # shown once; only its hash is stored
    return json_response(app, status=201)


async def set_app(request: web.Request) -> web.Response:
    body = _fields(await json_body(request, required=True), ("name", "redirect_uris"))
    app = await ctx(request).call(APP, request.match_info["client_id"], "update", body,
                                  op_id=f"admin-{uuid.uuid4().hex}")
    return json_response(app)


async def list_apps(request: web.Request) -> web.Response:
    return await _listing(request, "apps", APP, "get")
