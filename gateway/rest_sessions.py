"""The user's open sessions over REST (an extension of Spotify's API; docs/sessions.md "REST").

  GET    /v1/me/sessions               -> {"sessions": [connection, ...], "version": n}
  DELETE /v1/me/sessions/{device_id}   sign the device out -> {"device_id", "closed", "version"}

A connection object is the session entity's: {conn, device_id, client, gateway, connected_since,
last_seen} (unix ms), plus `this_device`: true for the connections of the device the calling
token is bound to (its `sid`). Signing out closes every connection of the device on every gateway
at once (the session pushes `session.ended` to each) and refuses the device's tokens from then on
(SESSION_ENDED, 401) — a token minted after the sign-out is accepted again. Signing out a device
with no open connection still revokes it. A user only ever sees and ends their own sessions: the
entity is the caller's (`session:<token sub>`).
"""
from __future__ import annotations

from aiohttp import web

from gateway.http import add_route, ctx, json_response, mutation_op_id, principal
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import SESSION

MAX_DEVICE_ID = 200


def setup(app: web.Application) -> None:
    add_route(app, "GET", "/v1/me/sessions", list_sessions)
    add_route(app, "DELETE", "/v1/me/sessions/{device_id}", end_session)


async def list_sessions(request: web.Request) -> web.Response:
    p = principal(request)
    reply = await ctx(request).call(SESSION, p.user_id, "list_connections", {}, principal=p)
    sessions = []
    for c in reply["connections"]:
        c = dict(c)
        c.pop("current", None)
        c["this_device"] = p.device_id is not None and c.get("device_id") == p.device_id
        sessions.append(c)
    return json_response({"sessions": sessions, "version": reply["version"]})


async def end_session(request: web.Request) -> web.Response:
    device_id = request.match_info["device_id"]
    if not 0 < len(device_id) <= MAX_DEVICE_ID:
        raise SyncopateError(ErrorCode.BAD_REQUEST, f"device id must be 1 to {MAX_DEVICE_ID} characters")
    p = principal(request)
    reply = await ctx(request).call(SESSION, p.user_id, "end_connection", {"device_id": device_id},
                                    principal=p, op_id=mutation_op_id(request))
    return json_response(reply)
