"""The operator API for elastic hosts (`syncopate hosts add|remove|list`, docs/architecture.md):

  GET  /admin/hosts              the membership view: {epoch, hosts: [slots], members: {slot: holder}}
  POST /admin/hosts              {"add": N} or {"remove": N} (1 <= N <= MAX_CHANGE), or {"remove_slot": S}
                                 (a slot in the view) -> 202, the request queued for the driver, which
                                 owns the host actors and carries it out within a second or so (new
                                 slots join the view; removed ones, the last N or slot S, leave it,
                                 handing their entities off first); watch GET for the new epoch.

Operator tokens only (gateway/middleware.py: everything under /admin/). Bad input is refused
(400, Spotify's error shape) and changes nothing; a server without a membership view (the
in-process one) refuses with 400 as well.
"""
from __future__ import annotations

from aiohttp import web

from gateway.http import add_route, ctx, json_body, json_response
from protocols.errors import ErrorCode, SyncopateError

MAX_CHANGE = 64


def setup(app: web.Application) -> None:
    add_route(app, "GET", "/admin/hosts", list_hosts)
    add_route(app, "POST", "/admin/hosts", change_hosts)


def _cluster(request: web.Request):
    cluster = ctx(request).dispatcher.cluster
    if cluster is None or ctx(request).host_control is None:
        raise SyncopateError(ErrorCode.BAD_REQUEST, "this server has no membership view: hosts can't change at runtime")
    return cluster


def _view(cluster) -> dict:
    v = cluster.view
    return {"epoch": v.epoch, "hosts": list(v.slots), "members": {str(s): h for s, h in sorted(v.members.items())}}


async def list_hosts(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    await cluster.refresh()
    return json_response(_view(cluster))


async def change_hosts(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    body = await json_body(request, required=True)
    if set(body) not in ({"add"}, {"remove"}, {"remove_slot"}):
        raise SyncopateError(ErrorCode.BAD_REQUEST, 'give exactly one of "add", "remove" or "remove_slot"')
    (action, n), = body.items()
    if not isinstance(n, int) or isinstance(n, bool):
        raise SyncopateError(ErrorCode.INVALID_FIELD, f"{action} must be an integer")
    if action != "remove_slot" and not 1 <= n <= MAX_CHANGE:
        raise SyncopateError(ErrorCode.INVALID_FIELD, f"{action} must be an integer from 1 to {MAX_CHANGE}")
    await cluster.refresh()
    if action == "remove_slot" and n not in cluster.view.members:
        raise SyncopateError(ErrorCode.NOT_FOUND, f"no host in slot {n} (the view has {list(cluster.view.slots)})")
    if action != "add" and (1 if action == "remove_slot" else n) >= len(cluster.view.members):
        raise SyncopateError(ErrorCode.BAD_REQUEST, f"{len(cluster.view.members)} hosts: at least one must stay")
    ctx(request).host_control({"action": action, "n": n, "epoch": cluster.view.epoch})
    return json_response({"requested": {action: n}, **_view(cluster)}, status=202)
