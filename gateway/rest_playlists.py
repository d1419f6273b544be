"""Playlists over REST, in both of Spotify's generations.

Both `/playlists/{id}/items` (current) and `/playlists/{id}/tracks` (classic) are served by the same
handlers; creation is `POST /me/playlists` or `POST /users/{user_id}/playlists`. Every mutation is
one command to the playlist entity and answers `{"snapshot_id"}` once it is durable. The entity
answers with entry rows (uri, added_by, added_at); this module hydrates them with the catalog
into Spotify's objects. Followers (`/playlists/{id}/followers`) live in gateway/rest_library.py.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from gateway.http import (add_route, base_url, ctx, int_param, json_body, json_response, mutation_op_id, request_json,
                          paging, principal)
from gateway.markets import MARKET, request_filter, request_market
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import PLAYLIST, SESSION
from protocols.uris import keyed_id, parse_uri

OBJECT_PAGE = 100           # items embedded in a full playlist object


def setup(app: web.Application) -> None:
    add_route(app, "POST", "/v1/me/playlists", create)
    add_route(app, "POST", "/v1/users/{user_id}/playlists", create)
    add_route(app, "GET", "/v1/me/playlists", my_playlists)
    add_route(app, "GET", "/v1/users/{user_id}/playlists", user_playlists)
    add_route(app, "GET", "/v1/playlists/{id}", get_playlist)
    add_route(app, "PUT", "/v1/playlists/{id}", change_details)
    for sub in ("items", "tracks"):
        add_route(app, "GET", f"/v1/playlists/{{id}}/{sub}", get_items)
        add_route(app, "POST", f"/v1/playlists/{{id}}/{sub}", add_items)
        add_route(app, "PUT", f"/v1/playlists/{{id}}/{sub}", replace_or_reorder)
        add_route(app, "DELETE", f"/v1/playlists/{{id}}/{sub}", remove_items)
    add_route(app, "GET", "/v1/playlists/{id}/collaborators", collaborators)
    add_route(app, "PUT", "/v1/playlists/{id}/collaborators/{user_id}", set_collaborator)
    add_route(app, "DELETE", "/v1/playlists/{id}/collaborators/{user_id}", remove_collaborator)


# -- shapes --------------------------------------------------------------------------------------
def iso(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(float(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, OverflowError):
        return "1970-01-01T00:00:00Z"


def user_object(request: web.Request, user_id: str) -> dict:
    return {"display_name": user_id, "external_urls": {"spotify": f"https://open.spotify.com/user/{user_id}"},
            "href": f"{base_url(request)}/users/{user_id}", "id": user_id, "type": "user",
            "uri": f"spotify:user:{user_id}"}


def item_object(request: web.Request, row: dict) -> dict:
    """An entry row {entry_id, uri, added_by, added_at} -> Spotify's playlist track object."""
    catalog = ctx(request).catalog
    track = catalog.track_by_uri(row["uri"])
    obj = catalog.track_object(track, base_url=base_url(request), market=request.get(MARKET),
                               explicit_filter=request_filter(request)) \
        if track is not None else None
    if obj is not None:
        obj = {**obj, "episode": False, "track": True}
    return {"added_at": iso(row.get("added_at")), "added_by": user_object(request, str(row.get("added_by"))),
            "is_local": False, "primary_color": None, "video_thumbnail": None, "track": obj, "item": obj,
            "entry_id": row.get("entry_id")}


def playlist_object(request: web.Request, pl: dict, items_page: dict | None = None) -> dict:
    """The entity's playlist dict -> Spotify's playlist object (full with an items page, else simplified)."""
    pid = pl["id"]
    href = f"{base_url(request)}/playlists/{pid}"
    total = (pl.get("items") or pl.get("tracks") or {}).get("total", 0)
    out = {
        "collaborative": pl.get("collaborative", False), "description": pl.get("description", ""),
        "external_urls": {"spotify": f"https://open.spotify.com/playlist/{pid}"}, "href": href, "id": pid,
        "images": [], "name": pl.get("name", ""), "owner": user_object(request, pl["owner"]["id"]),
        "primary_color": None, "public": pl.get("public"), "snapshot_id": pl.get("snapshot_id"),
        "type": "playlist", "uri": f"spotify:playlist:{pid}",
    }
    if items_page is None:
        out["tracks"] = out["items"] = {"href": f"{href}/tracks", "total": total}
    else:
        out["followers"] = {"href": None, "total": (pl.get("followers") or {}).get("total", 0)}
        out["tracks"] = out["items"] = items_page
    return out


async def _items_page(request: web.Request, pid: str, offset: int, limit: int, path: str) -> dict:
    market = await request_market(request)        # item tracks carry is_playable in it (docs/rights.md)
    reply = await ctx(request).call(PLAYLIST, pid, "items", {"offset": offset, "limit": limit},
                                    principal=principal(request))
    items = [item_object(request, row) for row in reply["items"]]
    extra = f"market={request.query['market']}" if market is not None else ""
    return paging(request, items, reply["total"], offset, limit, path=path, extra_query=extra)


def _pid(request: web.Request) -> str:
    pid = request.match_info["id"]
    if not 0 < len(pid) <= 64 or not pid.replace("_", "").replace("-", "").isalnum():
        raise SyncopateError(ErrorCode.INVALID_URI, f"invalid playlist id: {pid!r}")
    return pid


def _snapshot(reply: Any, status: int = 200) -> web.Response:
    return json_response({"snapshot_id": reply["snapshot_id"]}, status=status)


# -- handlers ------------------------------------------------------------------------------------
async def create(request: web.Request) -> web.Response:
    me = principal(request)
    owner = request.match_info.get("user_id")
    if owner is not None and owner != me.user_id:
        raise SyncopateError(ErrorCode.FORBIDDEN, "you can only create playlists for yourself")
    body = await json_body(request, required=True)
    if not isinstance(body.get("name"), str) or not body["name"].strip():
        raise SyncopateError(ErrorCode.BAD_REQUEST, "name is required")
    args = {k: body[k] for k in ("name", "description", "public", "collaborative") if k in body}
    # a retry with the same op id must reach the same entity, so the id derives from it
    op_id = mutation_op_id(request)
    pid = keyed_id(me.user_id, op_id)
    pl = await ctx(request).call(PLAYLIST, pid, "create", args, principal=me, op_id=op_id)
    page = paging(request, [], 0, 0, OBJECT_PAGE, path=f"/v1/playlists/{pid}/tracks")
    return json_response(playlist_object(request, pl, page), status=201)


async def get_playlist(request: web.Request) -> web.Response:
    pid = _pid(request)
    pl = await ctx(request).call(PLAYLIST, pid, "get", {}, principal=principal(request))
    page = await _items_page(request, pid, 0, OBJECT_PAGE, f"/v1/playlists/{pid}/tracks")
    return json_response(playlist_object(request, pl, page))


async def change_details(request: web.Request) -> web.Response:
    pid = _pid(request)
    body = await json_body(request, required=True)
    args = {k: body[k] for k in ("name", "description", "public", "collaborative") if k in body}
    if not args:
        raise SyncopateError(ErrorCode.BAD_REQUEST, "nothing to change")
    await ctx(request).call(PLAYLIST, pid, "update_details", args, principal=principal(request),
                            op_id=mutation_op_id(request))
    return web.Response(status=200)


async def get_items(request: web.Request) -> web.Response:
    pid = _pid(request)
    offset = int_param(request, "offset", 0, 0, 10_000)
    limit = int_param(request, "limit", 50 if request.path.rstrip("/").endswith("items") else 100, 1, 100)
    return json_response(await _items_page(request, pid, offset, limit, request.path.rstrip("/")))


async def _body_any(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return {}
    return request_json(raw)


async def add_items(request: web.Request) -> web.Response:
    pid = _pid(request)
    body = await _body_any(request)
    if isinstance(body, list):                  # spotipy sends the uris as a bare array
        body = {"uris": body}
    if not isinstance(body, dict):
        raise SyncopateError(ErrorCode.BAD_REQUEST, "the JSON body must be an object or an array of uris")
    uris = body.get("uris")
    if uris is None and request.query.get("uris"):
        uris = [u for u in request.query["uris"].split(",") if u]
    if not isinstance(uris, list) or not uris:
        raise SyncopateError(ErrorCode.BAD_REQUEST, "uris is required")
    if len(uris) > 100:
        raise SyncopateError(ErrorCode.BAD_REQUEST, "at most 100 uris per request")
    args: dict = {"uris": uris}
    position = body.get("position", request.query.get("position"))
    if position is not None:
        try:
            args["position"] = int(position)
        except (TypeError, ValueError):
            raise SyncopateError(ErrorCode.BAD_REQUEST, "position must be an integer") from None
    reply = await ctx(request).call(PLAYLIST, pid, "add", args, principal=principal(request),
                                    op_id=mutation_op_id(request))
    return _snapshot(reply, status=201)


async def replace_or_reorder(request: web.Request) -> web.Response:
    pid = _pid(request)
    body = await json_body(request)
    c = ctx(request)
    if "range_start" in body or "insert_before" in body:
        args = {k: body[k] for k in ("range_start", "insert_before", "range_length", "snapshot_id") if k in body}
        reply = await c.call(PLAYLIST, pid, "reorder", args, principal=principal(request),
                             op_id=mutation_op_id(request))
        return _snapshot(reply)
    uris = body.get("uris")
    if uris is None and "uris" in request.query:
        uris = [u for u in request.query["uris"].split(",") if u]
    if not isinstance(uris, list):
        raise SyncopateError(ErrorCode.BAD_REQUEST, "uris (replace) or range_start/insert_before (reorder) required")
    reply = await c.call(PLAYLIST, pid, "replace", {"uris": uris}, principal=principal(request),
                         op_id=mutation_op_id(request))
    return _snapshot(reply, status=200)


async def remove_items(request: web.Request) -> web.Response:
    pid = _pid(request)
    body = await json_body(request, required=True)
    tracks = body.get("items", body.get("tracks"))
    if not isinstance(tracks, list) or not tracks:
        raise SyncopateError(ErrorCode.BAD_REQUEST, "items (or tracks) is required")
    if len(tracks) > 100:
        raise SyncopateError(ErrorCode.BAD_REQUEST, "at most 100 items per request")
    args = {"tracks": tracks}
    if "snapshot_id" in body:
        args["snapshot_id"] = body["snapshot_id"]
    reply = await ctx(request).call(PLAYLIST, pid, "remove", args, principal=principal(request),
                                    op_id=mutation_op_id(request))
    return _snapshot(reply)


async def _simplified(request: web.Request, ids: list[str]) -> list[dict]:
    """Hydrate playlist ids the caller may see (others are skipped: private or gone)."""
    c, me = ctx(request), principal(request)

    async def one(pid):
        try:
            return playlist_object(request, await c.call(PLAYLIST, pid, "get", {}, principal=me))
        except SyncopateError as err:
            if err.code in (ErrorCode.NOT_FOUND, ErrorCode.FORBIDDEN, ErrorCode.INVALID_URI):
                return None
            raise

    found = await asyncio.gather(*(one(pid) for pid in ids))
    return [p for p in found if p is not None]


async def _list_for(request: web.Request, user_id: str, as_system: bool) -> web.Response:
    limit = int_param(request, "limit", 20, 1, 50)
    offset = int_param(request, "offset", 0, 0, 100_000)
    from actors.entity import SYSTEM
    who = SYSTEM if as_system else principal(request)
    reply = await ctx(request).call(SESSION, user_id, "library_list",
                                    {"type": "playlist", "offset": offset, "limit": limit}, principal=who)
    ids = []
    for it in reply["items"]:
        pid = it.get("id") or parse_uri(it["uri"], "playlist")[1]
        ids.append(pid)
    items = await _simplified(request, ids)
    if as_system:        # another user's list: only their own public playlists
        items = [p for p in items if p["owner"]["id"] == user_id and p.get("public")]
    return json_response(paging(request, items, reply["total"], offset, limit))


async def my_playlists(request: web.Request) -> web.Response:
    return await _list_for(request, principal(request).user_id, as_system=False)


async def user_playlists(request: web.Request) -> web.Response:
    uid = request.match_info["user_id"]
    if uid == principal(request).user_id:
        return await _list_for(request, uid, as_system=False)
    return await _list_for(request, uid, as_system=True)


async def collaborators(request: web.Request) -> web.Response:
    reply = await ctx(request).call(PLAYLIST, _pid(request), "collaborators", {}, principal=principal(request))
    return json_response(reply)


async def set_collaborator(request: web.Request) -> web.Response:
    body = await json_body(request, required=True)
    reply = await ctx(request).call(PLAYLIST, _pid(request), "set_collaborator",
                                    {"user_id": request.match_info["user_id"], "role": body.get("role")},
                                    principal=principal(request), op_id=mutation_op_id(request))
    return _snapshot(reply)


async def remove_collaborator(request: web.Request) -> web.Response:
    reply = await ctx(request).call(PLAYLIST, _pid(request), "remove_collaborator",
                                    {"user_id": request.match_info["user_id"]},
                                    principal=principal(request), op_id=mutation_op_id(request))
    return _snapshot(reply)
