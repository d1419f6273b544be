"""Listening events over REST (extensions; docs/events.md, the OpenAPI extension in gateway/openapi_vendor.py).

  POST /v1/me/player/events                {events: [event]} (1..200): offline batch upload -> 200
                                           {results: [{event_id, status, reason?, message?, play_id?}],
                                            accepted, duplicate, refused}
  PUT  /v1/me/player/private-session?state=true|false   the device group's private session -> 204
  GET  /admin/events/stream-counts?uris=a,b&from=YYYY-MM-DD&to=YYYY-MM-DD
                                           operator: per-track, per-day stream counts of the pipeline
                                           {counts: {uri: {day: n}}, total}

An upload answers 200 whatever each event's outcome: the answer lists every event (an invalid event
is `refused` with its reason, never a failure of the batch). A malformed body (not a list, more than
200 events) is 400 with nothing recorded. An `Idempotency-Key` makes the upload itself safe to retry
(answered with the first answer); without one a retry is judged again and its events come back
`duplicate`.
"""
from __future__ import annotations

import re

from aiohttp import web

from gateway.http import add_route, ctx, json_body, json_response, list_param, mutation_op_id, no_content, principal
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import DEVICE_GROUP

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_COUNT_URIS = 1000


def setup(app: web.Application) -> None:
    add_route(app, "POST", "/v1/me/player/events", upload)
    add_route(app, "PUT", "/v1/me/player/private-session", private_session)
    add_route(app, "GET", "/admin/events/stream-counts", stream_counts)


async def upload(request: web.Request) -> web.Response:
    body = await json_body(request, required=True)
    if set(body) - {"events"}:
        raise SyncopateError(ErrorCode.BAD_REQUEST, f"unknown fields: {sorted(set(body) - {'events'})}")
    p = principal(request)
    reply = await ctx(request).call(DEVICE_GROUP, p.user_id, "upload_events", {"events": body.get("events")},
                                    principal=p, op_id=mutation_op_id(request))
    return json_response(reply)


async def private_session(request: web.Request) -> web.Response:
    raw = request.query.get("state")
    if raw not in ("true", "false"):
        raise SyncopateError(ErrorCode.INVALID_FIELD, "state must be true or false")
    p = principal(request)
    await ctx(request).call(DEVICE_GROUP, p.user_id, "private_session", {"enabled": raw == "true"}, principal=p,
                            op_id=mutation_op_id(request))
    return no_content()


async def stream_counts(request: web.Request) -> web.Response:
    reader = ctx(request).events
    if reader is None:
        raise SyncopateError(ErrorCode.NOT_FOUND, "this gateway has no event pipeline")
    uris = list_param(request, "uris", max_items=MAX_COUNT_URIS, required=False) or None
    days = {}
    for name in ("from", "to"):
        v = request.query.get(name)
        if v is not None and not _DAY.match(v):
            raise SyncopateError(ErrorCode.INVALID_FIELD, f"{name} must be a day YYYY-MM-DD")
        days[name] = v
    counts = await reader.stream_counts(uris, days["from"], days["to"])
    return json_response({"counts": counts, "total": sum(n for d in counts.values() for n in d.values())})
