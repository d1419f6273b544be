"""Spotify's player (Connect) endpoints over REST: a thin translation onto the user's device group.

Every handler calls `devicegroup:<user id>` (actors/devicegroup.py, docs/connect.md) with the caller's
principal; the entity validates, serializes, persists and pushes the new cluster to every device.
Nothing here holds state.

  GET  /v1/me/player                     playback state (CurrentlyPlayingContext); 204 when no device is active
  PUT  /v1/me/player                     transfer {device_ids: [exactly one], play?}                  -> 204
  GET  /v1/me/player/devices             {devices: [DeviceObject]} (online devices only)
  GET  /v1/me/player/currently-playing   204 when nothing is playing
  PUT  /v1/me/player/play                {context_uri | uris, offset {position}|{uri}, position_ms}; no body = resume
  PUT  /v1/me/player/pause               POST /v1/me/player/next, POST /v1/me/player/previous        -> 204
  PUT  /v1/me/player/seek?position_ms=   (past the end of the track: the next track)                 -> 204
  PUT  /v1/me/player/repeat?state=track|context|off                                                  -> 204
  PUT  /v1/me/player/volume?volume_percent=0..100                                                    -> 204
  PUT  /v1/me/player/shuffle?state=true|false                                                        -> 204
  GET  /v1/me/player/queue               {currently_playing, queue: [track]}
  POST /v1/me/player/queue?uri=          add a track to the user queue                               -> 204
  PUT  /v1/me/player/autoplay?state=true|false   extension: autoplay on / off (docs/rights.md)     -> 204
  GET  /v1/me/player/recently-played?limit=1..50&after=|before=   cursor paging, newest first (from the
                                         event pipeline's record when the gateway has one: docs/events.md)
  GET  /v1/me/player/stream-counts?uris=a,b   the operator query: {user_id, counts: {uri: n}, total}

`device_id` (query) targets a device on every command; without it the active device. Query parameters
are checked here for type (a non-integer `position_ms` is 400 INVALID_FIELD) and by the entity for
range and meaning; every refusal is Spotify's error shape with the entity's reason (NO_ACTIVE_DEVICE
404, PREMIUM_REQUIRED 403, ALREADY_PAUSED 403, ...) and changes nothing. An `Idempotency-Key` header on
a command becomes its op id: a retry with the same key is applied once and answered with the first
answer. `market` (a code or `from_token`) makes the track objects of the state, currently-playing, queue
and recently-played answers carry `is_playable` / `restrictions` (docs/rights.md); `additional_types`
is accepted and ignored. A play of a track not licensed in the user's market is 403 (TRACK_UNAVAILABLE,
Spotify's error shape). Hrefs in answers point at this server.
Device objects follow Spotify's DeviceObject: device types are spelled as Spotify does (`computer` ->
`Computer`, `car` -> `Automobile`, `tv` -> `TV`; unknown types as registered) and our `is_online` is
left out (only online devices are listed); the playback state carries `smart_shuffle: false`.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import presenters
from gateway.markets import MARKET, request_filter, request_market
from gateway.http import (
    add_route,
    base_url,
    ctx,
    json_body,
    json_response,
    list_param,
    mutation_op_id,
    no_content,
    principal,
)
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import DEVICE_GROUP

MAX_DEVICE_ID = 128
MAX_STREAM_COUNT_URIS = 1000
PLAY_FIELDS = ("context_uri", "uris", "offset", "position_ms")
_NOT_SPOTIFY = ("is_online",)          # our own device fields, left out of Spotify's DeviceObject
# Device types as Spotify's Web API spells them (devices register lowercase: computer, car, ...).
DEVICE_TYPES = {t.lower(): t for t in ("Computer", "Tablet", "Smartphone", "Speaker", "TV", "AVR", "STB",
                                        "AudioDongle", "GameConsole", "CastVideo", "CastAudio", "Automobile",
                                        "Unknown")}
DEVICE_TYPES["car"] = "Automobile"


def setup(app: web.Application) -> None:
    add_route(app, "GET", "/v1/me/player", get_state)
    add_route(app, "PUT", "/v1/me/player", transfer)
    add_route(app, "GET", "/v1/me/player/devices", get_devices)
    add_route(app, "GET", "/v1/me/player/currently-playing", get_currently_playing)
    add_route(app, "PUT", "/v1/me/player/play", play)
    add_route(app, "PUT", "/v1/me/player/pause", _simple("pause"))
    add_route(app, "POST", "/v1/me/player/next", _simple("next"))
    add_route(app, "POST", "/v1/me/player/previous", _simple("previous"))
    add_route(app, "PUT", "/v1/me/player/seek", seek)
    add_route(app, "PUT", "/v1/me/player/repeat", repeat)
    add_route(app, "PUT", "/v1/me/player/volume", volume)
    add_route(app, "PUT", "/v1/me/player/shuffle", shuffle)
    add_route(app, "GET", "/v1/me/player/queue", get_queue)
    add_route(app, "POST", "/v1/me/player/queue", queue_add)
    add_route(app, "PUT", "/v1/me/player/autoplay", autoplay)
    add_route(app, "GET", "/v1/me/player/recently-played", recently_played)
    add_route(app, "GET", "/v1/me/player/stream-counts", stream_counts)


# -- helpers ------------------------------------------------------------------------------------

async def _group(request: web.Request, op: str, args: dict | None = None, *, command: bool = False) -> Any:
    """Call the caller's device group. Commands take `device_id` from the query and an op id from
    the Idempotency-Key header."""
    p = principal(request)
    args = dict(args or {})
    if command:
        dev = request.query.get("device_id")
        if dev is not None:
            if not 0 < len(dev) <= MAX_DEVICE_ID:
                raise SyncopateError(ErrorCode.INVALID_FIELD, f"device_id must be 1 to {MAX_DEVICE_ID} characters")
            args["device_id"] = dev
    return await ctx(request).call(DEVICE_GROUP, p.user_id, op, args, principal=p,
                                   op_id=mutation_op_id(request) if command else None)


def _query_int(request: web.Request, name: str, *, required: bool) -> int | None:
    """An integer query parameter; missing (when required) or not an integer -> 400 INVALID_FIELD.
    Ranges are the entity's to check (BAD_REQUEST)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        if required:
            raise SyncopateError(ErrorCode.INVALID_FIELD, f"{name} is required")
        return None
    try:
        return int(raw, 10)
    except ValueError:
        raise SyncopateError(ErrorCode.INVALID_FIELD, f"{name} must be an integer, not {raw[:40]!r}") from None


def _query_str(request: web.Request, name: str) -> str:
    raw = request.query.get(name)
    if raw is None or raw == "":
        raise SyncopateError(ErrorCode.INVALID_FIELD, f"{name} is required")
    return raw


def _device(d: dict) -> dict:
    out = {k: v for k, v in d.items() if k not in _NOT_SPOTIFY}
    t = out.get("type")
    if isinstance(t, str):
        out["type"] = DEVICE_TYPES.get(t.lower(), t)
    return out


def _answer(reply: Any) -> web.Response:
    if reply is None:
        return no_content()
    return json_response(reply)


def _present(request: web.Request, fn, reply: Any) -> Any:
    """The entity's domain value as Spotify's object, hrefs pointing at this server, track objects
    in the request's market (request_market ran first)."""
    if fn is presenters.recently_played:
        return fn(ctx(request).catalog, reply, base_url(request))
    return fn(ctx(request).catalog, reply, base_url(request), request.get(MARKET), request_filter(request))


# -- reads --------------------------------------------------------------------------------------

async def get_state(request: web.Request) -> web.Response:
    await request_market(request)
    reply = _present(request, presenters.playing, await _group(request, "state"))
    if reply is not None:
        if reply.get("device"):
            reply["device"] = _device(reply["device"])
        reply.setdefault("smart_shuffle", False)     # not supported; real payloads carry it
    return _answer(reply)


async def get_devices(request: web.Request) -> web.Response:
    reply = await _group(request, "devices")
    return json_response({"devices": [_device(d) for d in presenters.devices(reply)["devices"]]})


async def get_currently_playing(request: web.Request) -> web.Response:
    await request_market(request)
    return _answer(_present(request, presenters.playing, await _group(request, "currently_playing")))


async def get_queue(request: web.Request) -> web.Response:
    await request_market(request)
    return _answer(_present(request, presenters.queue, await _group(request, "queue")))


async def recently_played(request: web.Request) -> web.Response:
    args = {}
    for name in ("limit", "after", "before"):
        v = _query_int(request, name, required=False)
        if v is not None:
            args[name] = v
    reader = ctx(request).events
    if reader is not None:
        # From the event pipeline's durable record (docs/events.md): the user's counted plays outside
        # private sessions. The same checks as the device group's op.
        limit = args.get("limit", 20)
        if not 1 <= limit <= 50:
            raise SyncopateError(ErrorCode.BAD_REQUEST, f"limit must be between 1 and 50, got {limit}")
        if "before" in args and "after" in args:
            raise SyncopateError(ErrorCode.BAD_REQUEST, "give before or after, not both")
        for name in ("before", "after"):
            if args.get(name, 0) < 0:
                raise SyncopateError(ErrorCode.BAD_REQUEST, f"{name} must be at least 0")
        page = await reader.recently_played(principal(request).user_id, limit, args.get("before"), args.get("after"))
    else:
        page = await _group(request, "recently_played", args)
    reply = _present(request, presenters.recently_played, page)
    reply["href"] = str(request.url)
    return _answer(reply)


async def stream_counts(request: web.Request) -> web.Response:
    uris = list_param(request, "uris", max_items=MAX_STREAM_COUNT_URIS, required=False)
    return json_response(await _group(request, "stream_counts", {"uris": uris} if uris else {}))


# -- commands (204 on success) -------------------------------------------------------------------

async def transfer(request: web.Request) -> web.Response:
    body = await json_body(request, required=True)
    args = {"device_ids": body.get("device_ids")}
    if body.get("play") is not None:
        args["play"] = body["play"]
    await _group(request, "transfer", args, command=True)
    return no_content()


async def play(request: web.Request) -> web.Response:
    body = await json_body(request)
    args = {k: body[k] for k in PLAY_FIELDS if body.get(k) is not None}
    await _group(request, "play", args, command=True)
    return no_content()


def _simple(op: str):
    async def handler(request: web.Request) -> web.Response:
        await _group(request, op, command=True)
        return no_content()
    handler.__name__ = op
    return handler


async def seek(request: web.Request) -> web.Response:
    await _group(request, "seek", {"position_ms": _query_int(request, "position_ms", required=True)}, command=True)
    return no_content()


async def repeat(request: web.Request) -> web.Response:
    await _group(request, "repeat", {"state": _query_str(request, "state")}, command=True)
    return no_content()


async def volume(request: web.Request) -> web.Response:
    vol = _query_int(request, "volume_percent", required=True)
    await _group(request, "volume", {"volume_percent": vol}, command=True)
    return no_content()


def _query_bool(request: web.Request, name: str) -> bool:
    raw = _query_str(request, name).lower()
    if raw not in ("true", "false"):
        raise SyncopateError(ErrorCode.INVALID_FIELD, f"{name} must be true or false")
    return raw == "true"


async def shuffle(request: web.Request) -> web.Response:
    await _group(request, "shuffle", {"state": _query_bool(request, "state")}, command=True)
    return no_content()


async def autoplay(request: web.Request) -> web.Response:
    await _group(request, "autoplay", {"state": _query_bool(request, "state")}, command=True)
    return no_content()


async def queue_add(request: web.Request) -> web.Response:
    await _group(request, "queue_add", {"uri": _query_str(request, "uri")}, command=True)
    return no_content()
