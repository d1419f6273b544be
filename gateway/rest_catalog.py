"""Spotify's catalog endpoints: tracks, albums, artists and search, read from `ctx(request).catalog`.

Status codes follow Spotify: a malformed id (anything but 22 base62 characters) is 400
INVALID_URI; a well-formed id the catalog does not hold is 404 NOT_FOUND on the single-object
endpoints and a `null` entry on the multi-id ones (`?ids=`), in the order asked. Without `market`
track and album objects carry `available_markets`; with `market=XX` or `market=from_token` they
carry `is_playable` (and `restrictions: {reason: "market"}` when not), as Spotify's do
(docs/rights.md). `include_external` is accepted and ignored. Every `href`,
`next` and `previous` is absolute and points at this server, so clients that follow them
(spotipy's `next()`, tekore's `all_items`) stay here. Authentication is the gateway
middleware's job; handlers only read.
"""
from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from gateway.http import add_route, base_url, ctx, int_param, json_response, list_param, paging
from gateway.markets import request_filter, request_market
from protocols.errors import ErrorCode, SyncopateError
from protocols.uris import require_id

MAX_PAGE = 50
MAX_PAGE_OFFSET = 100_000
SEARCH_MAX_OFFSET = 1000
ALBUM_GROUPS = ("album", "single", "compilation", "appears_on")


def setup(app: web.Application) -> None:
    add_route(app, "GET", "/v1/tracks/{id}", get_track)
    add_route(app, "GET", "/v1/tracks", get_tracks)
    add_route(app, "GET", "/v1/albums/{id}", get_album)
    add_route(app, "GET", "/v1/albums", get_albums)
    add_route(app, "GET", "/v1/albums/{id}/tracks", get_album_tracks)
    add_route(app, "GET", "/v1/artists/{id}", get_artist)
    add_route(app, "GET", "/v1/artists", get_artists)
    add_route(app, "GET", "/v1/artists/{id}/albums", get_artist_albums)
    add_route(app, "GET", "/v1/artists/{id}/top-tracks", get_artist_top_tracks)
    add_route(app, "GET", "/v1/search", search)


def _found(obj, what: str, ident: str):
    if obj is None:
        raise SyncopateError(ErrorCode.NOT_FOUND, f"no such {what}: {ident}")
    return obj


def _ids(request: web.Request, max_items: int) -> list[str]:
    return [require_id(i) for i in list_param(request, "ids", max_items=max_items)]


async def get_track(request: web.Request) -> web.Response:
    cat, tid = ctx(request).catalog, require_id(request.match_info["id"], "track id")
    market = await request_market(request)
    return json_response(cat.track_object(_found(cat.track(tid), "track", tid), base_url(request), market,
                                          request_filter(request)))


def _several(key: str, max_items: int, lookup: str, render):
    """GET /v1/{tracks,albums,artists}?ids=: the objects in the order asked, null for an id the
    catalog does not hold. `render(catalog, obj, base_url, market, explicit_filter)` is the kind's
    Spotify object."""
    async def handler(request: web.Request) -> web.Response:
        cat, base = ctx(request).catalog, base_url(request)
        find = getattr(cat, lookup)
        found = [find(i) for i in _ids(request, max_items)]
        market = await request_market(request)
        ef = request_filter(request)
        return json_response({key: [render(cat, x, base, market, ef) if x else None for x in found]})
    handler.__name__ = f"get_{key}"
    return handler


get_tracks = _several("tracks", 50, "track", lambda cat, t, base, m, ef: cat.track_object(t, base, m, ef))
get_albums = _several("albums", 20, "album",
                      lambda cat, a, base, m, ef: cat.album_object(a, base_url=base, market=m, explicit_filter=ef))
get_artists = _several("artists", 50, "artist", lambda cat, a, base, m, ef: cat.artist_object(a, base))


async def get_album(request: web.Request) -> web.Response:
    cat, aid = ctx(request).catalog, require_id(request.match_info["id"], "album id")
    market = await request_market(request)
    return json_response(cat.album_object(_found(cat.album(aid), "album", aid), base_url=base_url(request),
                                          market=market, explicit_filter=request_filter(request)))


async def get_album_tracks(request: web.Request) -> web.Response:
    cat, aid = ctx(request).catalog, require_id(request.match_info["id"], "album id")
    album = _found(cat.album(aid), "album", aid)
    limit = int_param(request, "limit", 20, 1, MAX_PAGE)
    offset = int_param(request, "offset", 0, 0, MAX_PAGE_OFFSET)
    base = base_url(request)
    market = await request_market(request)
    ef = request_filter(request)
    items = [cat.simplified_track_object(cat.track(t), base, market, ef) for t in album.track_ids[offset:offset + limit]]
    return json_response(paging(request, items, len(album.track_ids), offset, limit))


async def get_artist(request: web.Request) -> web.Response:
    cat, aid = ctx(request).catalog, require_id(request.match_info["id"], "artist id")
    return json_response(cat.artist_object(_found(cat.artist(aid), "artist", aid), base_url(request)))


async def get_artist_albums(request: web.Request) -> web.Response:
    """Own albums grouped as Spotify does (album, single, compilation), then appears_on; newest
    first within a group. `include_groups` selects groups (default: all); the deprecated
    `album_type` (spotipy still sends it) is read the same way."""
    cat, aid = ctx(request).catalog, require_id(request.match_info["id"], "artist id")
    _found(cat.artist(aid), "artist", aid)
    raw_groups = request.query.get("include_groups") or request.query.get("album_type", "")
    groups = [g.strip() for g in raw_groups.split(",") if g.strip()] or list(ALBUM_GROUPS)
    bad = [g for g in groups if g not in ALBUM_GROUPS]
    if bad:
        raise SyncopateError(ErrorCode.BAD_REQUEST,
                             f"invalid include_groups {bad[0]!r}: use {', '.join(ALBUM_GROUPS)}")
    limit = int_param(request, "limit", 20, 1, MAX_PAGE)
    offset = int_param(request, "offset", 0, 0, MAX_PAGE_OFFSET)
    own = cat.artist_albums(aid)
    entries = [(a, g) for g in ALBUM_GROUPS if g in groups and g != "appears_on"
               for a in own if a.album_type == g]
    if "appears_on" in groups:
        entries += [(a, "appears_on") for a in cat.artist_appears_on(aid)]
    base = base_url(request)
    market = await request_market(request)
    items, ef = [], request_filter(request)
    for album, group in entries[offset:offset + limit]:
        obj = cat.album_object(album, full=False, base_url=base, market=market, explicit_filter=ef)
        obj["album_group"] = group
        items.append(obj)
    extra = urlencode({"include_groups": raw_groups}) if raw_groups else ""
    return json_response(paging(request, items, len(entries), offset, limit, extra_query=extra))


async def get_artist_top_tracks(request: web.Request) -> web.Response:
    cat, aid = ctx(request).catalog, require_id(request.match_info["id"], "artist id")
    _found(cat.artist(aid), "artist", aid)
    base = base_url(request)
    market = await request_market(request)
    ef = request_filter(request)
    return json_response({"tracks": [cat.track_object(t, base, market, ef) for t in cat.artist_top_tracks(aid)]})


async def search(request: web.Request) -> web.Response:
    """GET /v1/search?q=&type=track,album,artist[&limit=0..50][&offset=0..1000]: one paging object
    per requested type, keyed `tracks`/`albums`/`artists`. Each `next` repeats the query for its
    own type only, and stops at Spotify's offset ceiling of 1000."""
    cat, base = ctx(request).catalog, base_url(request)
    q = request.query.get("q", "")
    types = request.query.get("type", "")
    if not types.strip():
        raise SyncopateError(ErrorCode.BAD_REQUEST, "missing type")
    if not q.strip():
        raise SyncopateError(ErrorCode.BAD_REQUEST, "missing q")
    limit = int_param(request, "limit", 20, 0, MAX_PAGE)
    offset = int_param(request, "offset", 0, 0, SEARCH_MAX_OFFSET)
    market = await request_market(request)
    ef = request_filter(request)
    render = {
        "track": lambda t: cat.track_object(t, base, market, ef),
        "album": lambda a: cat.album_object(a, full=False, base_url=base, market=market, explicit_filter=ef),
        "artist": lambda a: cat.artist_object(a, base),
    }
    out = {}
    for kind, (found, total) in cat.search(q, types, limit, offset).items():
        page = paging(request, [render[kind](x) for x in found], total, offset, limit,
                      extra_query=urlencode({"q": q, "type": kind}))
        if limit == 0 or offset + limit > SEARCH_MAX_OFFSET:
            page["next"] = None
        out[kind + "s"] = page
    return json_response(out)
