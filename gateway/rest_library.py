"""The user's library over REST, in both generations of Spotify's API (docs/sessions.md).

Every handler is a thin translation onto the user's session entity (`session:<user id>`,
actors/session.py), which validates, persists and pushes `library.changed` to every open
connection of the user. Nothing here holds state.

Current surface (spotipy 2.26):
  PUT    /v1/me/library?uris=...            save up to 40 uris (track, album, artist, playlist) -> 200 {}
  DELETE /v1/me/library?uris=...            remove                                              -> 200 {}
  GET    /v1/me/library/contains?uris=...   -> [bool, ...]

Classic surface (tekore 6):
  PUT/DELETE /v1/me/tracks?ids=  (or a JSON body {"ids": [...]}; up to 50)   -> 200, empty body
  GET        /v1/me/tracks?limit=&offset=   saved-track paging object, newest first
  GET        /v1/me/tracks/contains?ids=    -> [bool, ...]
  the same for /v1/me/albums (items {added_at, album})
  PUT/DELETE /v1/me/following?type=artist&ids=   -> 204, empty body
  GET        /v1/me/following?type=artist&limit=&after=   {"artists": cursor paging object}
  GET        /v1/me/following/contains?type=artist&ids=
  PUT/DELETE /v1/playlists/{id}/followers   the playlist entity's follow/unfollow (it tells the
                                            session, which adds/removes the library item) -> 200
  GET        /v1/playlists/{id}/followers/contains?ids=   the caller's own follow state; other
                                            users' follows are private here -> false

Errors (Spotify's shape, nothing changed): a missing `uris`/`ids`, more than 40 (/me/library) or 50
(typed) items, a malformed id or uri (INVALID_URI), an unsupported type (episode, show, user:
BAD_REQUEST), a well-formed id the catalog doesn't know (UNKNOWN_URI) -> 400. One bad entry refuses
the whole call. An `Idempotency-Key` header on a mutation becomes the command's op id (without one
the gateway makes one, gateway/http.py): a retry with the same key is answered with the first
answer, never applied twice.
"""
from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from actors.library import iso
from gateway.http import (
    add_route,
    base_url,
    ctx,
    int_param,
    json_body,
    json_response,
    mutation_op_id,
    paging,
    principal,
)
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import PLAYLIST, SESSION
from protocols.uris import require_id

MAX_LIBRARY_URIS = 40          # PUT/DELETE /me/library, GET /me/library/contains
MAX_TYPED_IDS = 50             # /me/tracks, /me/albums, /me/following
MAX_PAGE = 50
MAX_OFFSET = 10_000_000
MAX_FOLLOWER_CHECK = 5         # /playlists/{id}/followers/contains (Spotify: at most 5 user ids)


def setup(app: web.Application) -> None:
    # current surface
    add_route(app, "PUT", "/v1/me/library", save_uris)
    add_route(app, "DELETE", "/v1/me/library", remove_uris)
    add_route(app, "GET", "/v1/me/library/contains", contains_uris)
    # classic surface
    for kind in ("track", "album"):
        path = f"/v1/me/{kind}s"
        add_route(app, "PUT", path, _typed_change("library_save", kind, 200))
        add_route(app, "DELETE", path, _typed_change("library_remove", kind, 200))
        add_route(app, "GET", path, _saved_page(kind))
        add_route(app, "GET", f"{path}/contains", _typed_contains(kind))
    add_route(app, "PUT", "/v1/me/following", follow_artists)
    add_route(app, "DELETE", "/v1/me/following", unfollow_artists)
    add_route(app, "GET", "/v1/me/following", followed_artists)
    add_route(app, "GET", "/v1/me/following/contains", following_contains)
    add_route(app, "PUT", "/v1/playlists/{id}/followers", follow_playlist)
    add_route(app, "DELETE", "/v1/playlists/{id}/followers", unfollow_playlist)
    add_route(app, "GET", "/v1/playlists/{id}/followers/contains", playlist_followers_contains)


# -- helpers ------------------------------------------------------------------------------------

async def _session(request: web.Request, op: str, args: dict, *, mutation: bool = False):
    p = principal(request)
    return await ctx(request).call(SESSION, p.user_id, op, args, principal=p,
                                   op_id=mutation_op_id(request) if mutation else None)


def _split(raw: str) -> list[str]:
    return [x.strip() for x in raw.split(",") if x.strip()]


async def _items(request: web.Request, name: str, max_items: int, *, body: bool) -> list[str]:
    """`name` from the query (comma-separated) or, for mutations, from a JSON body {name: [...]}.
    The query wins when both are given (as Spotify documents)."""
    items = _split(request.query.get(name, ""))
    if not items and body:
        data = await json_body(request)
        raw = data.get(name)
        if isinstance(raw, str):
            items = _split(raw)
        elif isinstance(raw, list):
            if not all(isinstance(x, str) for x in raw):
                raise SyncopateError(ErrorCode.BAD_REQUEST, f"{name} must be a list of strings")
            items = [x.strip() for x in raw if x.strip()]
        elif raw is not None:
            raise SyncopateError(ErrorCode.BAD_REQUEST, f"{name} must be a list of strings")
    if not items:
        raise SyncopateError(ErrorCode.BAD_REQUEST, f"missing {name}")
    if len(items) > max_items:
        raise SyncopateError(ErrorCode.BAD_REQUEST, f"at most {max_items} {name} per request",
                             limit=max_items)
    return items


def _artist_type(request: web.Request) -> str:
    kind = request.query.get("type")
    if not kind:
        raise SyncopateError(ErrorCode.BAD_REQUEST, "missing type")
    if kind == "user":
        raise SyncopateError(ErrorCode.BAD_REQUEST, "unsupported type: user (only artists can be followed here)")
    if kind != "artist":
        raise SyncopateError(ErrorCode.BAD_REQUEST, "type must be artist")
    return kind


def _empty(status: int = 200) -> web.Response:
    """Spotify answers the classic library mutations with an empty body (200, or 204)."""
    return web.Response(status=status)


# -- current surface: /me/library -----------------------------------------------------------------

async def save_uris(request: web.Request) -> web.Response:
    uris = await _items(request, "uris", MAX_LIBRARY_URIS, body=True)
    await _session(request, "library_save", {"uris": uris}, mutation=True)
    return json_response({})


async def remove_uris(request: web.Request) -> web.Response:
    uris = await _items(request, "uris", MAX_LIBRARY_URIS, body=True)
    await _session(request, "library_remove", {"uris": uris}, mutation=True)
    return json_response({})


async def contains_uris(request: web.Request) -> web.Response:
    uris = await _items(request, "uris", MAX_LIBRARY_URIS, body=False)
    return json_response(await _session(request, "library_contains", {"uris": uris}))


# -- classic surface: /me/tracks, /me/albums ------------------------------------------------------

def _typed_change(op: str, kind: str, status: int):
    async def handler(request: web.Request) -> web.Response:
        ids = await _items(request, "ids", MAX_TYPED_IDS, body=True)
        await _session(request, op, {"type": kind, "ids": ids}, mutation=True)
        return _empty(status)
    handler.__name__ = f"{op}_{kind}s"
    return handler


def _typed_contains(kind: str):
    async def handler(request: web.Request) -> web.Response:
        ids = await _items(request, "ids", MAX_TYPED_IDS, body=False)
        return json_response(await _session(request, "library_contains", {"type": kind, "ids": ids}))
    handler.__name__ = f"{kind}s_contains"
    return handler


def _saved_page(kind: str):
    """GET /me/tracks, /me/albums: newest first, offset paging, each item {added_at, <kind>: object}.
    An item the catalog no longer knows is left out of the page (it can still be removed)."""
    async def handler(request: web.Request) -> web.Response:
        limit = int_param(request, "limit", 20, 1, MAX_PAGE)
        offset = int_param(request, "offset", 0, 0, MAX_OFFSET)
        page = await _session(request, "library_list", {"type": kind, "offset": offset, "limit": limit})
        cat, base = ctx(request).catalog, base_url(request)
        items = []
        for it in page["items"]:
            if kind == "track":
                obj = cat.track(it["id"])
                obj = cat.track_object(obj, base) if obj is not None else None
            else:
                obj = cat.album(it["id"])
                obj = cat.album_object(obj, base_url=base) if obj is not None else None
            if obj is not None:
                items.append({"added_at": iso(it["added_at"]), kind: obj})
        return json_response(paging(request, items, page["total"], offset, limit))
    handler.__name__ = f"saved_{kind}s"
    return handler


# -- classic surface: /me/following (artists) -----------------------------------------------------

async def follow_artists(request: web.Request) -> web.Response:
    kind = _artist_type(request)
    ids = await _items(request, "ids", MAX_TYPED_IDS, body=True)
    await _session(request, "library_save", {"type": kind, "ids": ids}, mutation=True)
    return _empty(204)


async def unfollow_artists(request: web.Request) -> web.Response:
    kind = _artist_type(request)
    ids = await _items(request, "ids", MAX_TYPED_IDS, body=True)
    await _session(request, "library_remove", {"type": kind, "ids": ids}, mutation=True)
    return _empty(204)


async def following_contains(request: web.Request) -> web.Response:
    kind = _artist_type(request)
    ids = await _items(request, "ids", MAX_TYPED_IDS, body=False)
    return json_response(await _session(request, "library_contains", {"type": kind, "ids": ids}))


async def followed_artists(request: web.Request) -> web.Response:
    """{"artists": {href, items, limit, next, cursors: {after}, total}}: id order, cursor paging
    (`after` = the last id of the previous page; stays valid while follows change)."""
    _artist_type(request)
    limit = int_param(request, "limit", 20, 1, MAX_PAGE)
    after = request.query.get("after") or None
    if after is not None:
        require_id(after, "after (an artist id)")
    page = await _session(request, "library_list", {"type": "artist", "limit": limit, "after": after})
    cat, base = ctx(request).catalog, base_url(request)
    items = []
    for it in page["items"]:
        artist = cat.artist(it["id"])
        if artist is not None:
            items.append(cat.artist_object(artist, base))
    cursor = page["cursors"]["after"]

    def url(after_id: str | None) -> str:
        q = {"type": "artist", "limit": limit}
        if after_id:
            q["after"] = after_id
        return f"{base}/me/following?{urlencode(q)}"

    return json_response({"artists": {
        "href": url(after),
        "items": items,
        "limit": limit,
        "next": url(cursor) if cursor else None,
        "cursors": {"after": cursor},
        "total": page["total"],
    }})


# -- classic surface: /playlists/{id}/followers ---------------------------------------------------

def _playlist_id(request: web.Request) -> str:
    return require_id(request.match_info["id"], "playlist id")


async def follow_playlist(request: web.Request) -> web.Response:
    """The playlist entity counts the follower and tells the session (library_follow_playlist)."""
    pid = _playlist_id(request)
    body = await json_body(request)
    if "public" in body and not isinstance(body["public"], bool):
        raise SyncopateError(ErrorCode.BAD_REQUEST, "public must be a boolean")
    p = principal(request)
    await ctx(request).call(PLAYLIST, pid, "follow", {}, principal=p, op_id=mutation_op_id(request))
    return _empty(200)


async def unfollow_playlist(request: web.Request) -> web.Response:
    pid = _playlist_id(request)
    p = principal(request)
    await ctx(request).call(PLAYLIST, pid, "unfollow", {}, principal=p, op_id=mutation_op_id(request))
    return _empty(200)


async def playlist_followers_contains(request: web.Request) -> web.Response:
    """Spotify deprecated asking about other users: only the caller's own follow is answered
    (from the caller's library); any other user id answers false."""
    pid = _playlist_id(request)
    users = await _items(request, "ids", MAX_FOLLOWER_CHECK, body=False)
    p = principal(request)
    mine = False
    if p.user_id in users:
        mine = (await _session(request, "library_contains", {"uris": [f"spotify:playlist:{pid}"]}))[0]
    return json_response([mine if u == p.user_id else False for u in users])
