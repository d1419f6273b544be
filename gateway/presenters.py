"""Presentation of the device group: its domain values (ids, names, numbers, uris) as the shapes
clients read. The entity (actors/devicegroup.py) knows nothing of hrefs or Spotify's objects.

Every presenter takes the catalog (track, album and artist objects) and the base URL hrefs point
at: for REST the request's own base (gateway/http.base_url), for the websocket `WS_BASE`, the address
the websocket payloads have always carried, so they do not change.

  device_object(d)                 Connect device (the cluster's and the websocket's, with is_online)
  cluster(cat, c)                  the `player.changed` push / subscribe / register answer
  playing(cat, p, base)            `state` (with device) and `currently_playing` (without)
  devices(r)                       {devices: [device]}
  queue(cat, q, base)              {currently_playing, queue: [track]}
  recently_played(cat, r, base)    cursor page, newest first (href null: REST sets the request's)

Markets (docs/rights.md): with a `market` (REST: the request's `market` parameter; the websocket:
the market the device group plays in, which its replies carry) track objects carry `is_playable`
and, when not, `restrictions: {reason: "market"}` instead of `available_markets`.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Callable

from catalog import find_track
from protocols.messages import DEVICE_GROUP, MessageType

WS_BASE = "https://api.spotify.com/v1"
PLAYER_CHANGED = MessageType.PLAYER_CHANGED.value


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


_track = find_track


def device_object(d: dict) -> dict:
    return {"id": d["id"], "is_active": d["active"], "is_private_session": bool(d.get("private_session", False)),
            "is_restricted": d["is_restricted"], "name": d["name"], "type": d["type"],
            "volume_percent": d["volume_percent"], "supports_volume": d["supports_volume"],
            "is_online": d["online"]}


def track_meta(cat: Any, uri: str, market: str | None = None, explicit_filter: bool = False) -> dict:
    """The cluster's compact track: names and uris, no hrefs; `is_playable` for the group's listener
    (its market and explicit content filter)."""
    t = _track(cat, uri)
    if t is None:
        return {"uri": uri, "id": None, "name": None, "duration_ms": 0, "artists": [], "album": None,
                "is_playable": False}
    # Read from the catalog's records, not from its Spotify track object: that one (the album's
    # markets over all its tracks, hrefs, urls) was built on every push only to pick these names
    # from it, a third of presenting a push. The same values: tests/test_presenters.py compares.
    alb = cat.album(t.album_id)
    return {"uri": uri, "id": t.id, "name": t.name, "duration_ms": t.duration_ms,
            "artists": [{"name": a.name, "uri": a.uri} for a in map(cat.artist, t.artist_ids) if a is not None],
            "album": {"name": alb.name, "uri": alb.uri, "images": []} if alb is not None else {
                "name": None, "uri": None, "images": []},
            "is_playable": t.restriction(market, explicit_filter) is None}


def track_object(cat: Any, uri: str, base: str, market: str | None = None, explicit_filter: bool = False) -> dict:
    t = _track(cat, uri)
    if t is None:
        out = {"uri": uri, "type": "track", "name": None, "duration_ms": 0, "artists": [], "album": None}
        if market is not None:       # gone from the catalog: not playable anywhere
            out.update(is_playable=False, restrictions={"reason": "market"})
        return out
    return cat.track_object(t, base, market, explicit_filter)


def context_object(ctx: str | None, base: str) -> dict | None:
    if ctx is None:
        return None
    kind, ident = ctx.split(":")[1], ctx.split(":")[-1]
    return {"type": kind, "uri": ctx, "href": f"{base}/{kind}s/{ident}",
            "external_urls": {"spotify": f"https://open.spotify.com/{kind}/{ident}"}}


def cluster(cat: Any, c: Any) -> Any:
    """The whole device group (docs/connect.md); extra keys (register's heartbeat timings) kept."""
    if not isinstance(c, dict) or "player" not in c:
        return c
    out = {}
    for k, v in c.items():
        if k == "devices":
            v = [device_object(d) for d in v]
        elif k == "player":
            uri = v["track_uri"]
            v = {"track": track_meta(cat, uri, v.get("market"), bool(v.get("explicit_filter"))) if uri is not None else None,
                 **{pk: pv for pk, pv in v.items() if pk != "track_uri"}}
        out[k] = v
    return out


def playing(cat: Any, p: Any, base: str, market: str | None = None, explicit_filter: bool = False) -> Any:
    """`market` (and the explicit content filter): the request's (REST); the websocket passes the
    group's own (`p["market"]`, `p["explicit_filter"]`)."""
    if p is None:
        return None
    out: dict[str, Any] = {}
    if "device" in p:
        out["device"] = device_object(p["device"])
        out["repeat_state"] = p["repeat"]
        out["shuffle_state"] = p["shuffle"]
    uri = p["uri"]
    out.update({
        "context": context_object(p["context_uri"], base),
        "timestamp": p["timestamp"],
        "progress_ms": p["progress_ms"],
        "is_playing": p["is_playing"],
        "item": track_object(cat, uri, base, market, explicit_filter) if uri is not None else None,
        "currently_playing_type": "track" if uri is not None else "unknown",
        "actions": {"disallows": dict(p["disallows"])},
    })
    return out


def devices(r: dict) -> dict:
    return {"devices": [device_object(d) for d in r["devices"]]}


def queue(cat: Any, q: dict, base: str, market: str | None = None, explicit_filter: bool = False) -> dict:
    cur = q["currently_playing"]
    return {"currently_playing": track_object(cat, cur, base, market, explicit_filter) if cur is not None else None,
            "queue": [track_object(cat, u, base, market, explicit_filter) for u in q["queue"]]}


def recently_played(cat: Any, r: dict, base: str) -> dict:
    plays, limit = r["plays"], r["limit"]
    items = [{"track": track_object(cat, x["uri"], base), "played_at": _iso(x["played_at_ms"]),
              "context": context_object(x["context_uri"], base)} for x in plays]
    cursors = ({"after": str(plays[0]["played_at_ms"]), "before": str(plays[-1]["played_at_ms"])}
               if plays else None)
    nxt = None
    if plays and r["more"]:
        nxt = (f"{base}/me/player/recently-played?after={plays[0]['played_at_ms']}&limit={limit}"
               if r["direction"] == "after"
               else f"{base}/me/player/recently-played?before={plays[-1]['played_at_ms']}&limit={limit}")
    return {"href": None, "items": items, "limit": limit, "next": nxt, "cursors": cursors, "total": r["total"]}


# -- the websocket ---------------------------------------------------------------------------------

def _market(r: Any) -> str | None:
    return r.get("market") if isinstance(r, dict) else None


def _filter(r: Any) -> bool:
    """The group's explicit content filter, as its replies carry it."""
    return bool(r.get("explicit_filter")) if isinstance(r, dict) else False


def ws_replies(cat: Any) -> dict[str, Callable[[Any], Any]]:
    """Device-group op -> presenter of its websocket answer (ops not named answer as they are)."""
    return {
        "state": lambda r: playing(cat, r, WS_BASE, _market(r), _filter(r)),
        "currently_playing": lambda r: playing(cat, r, WS_BASE, _market(r), _filter(r)),
        "devices": devices,
        "queue": lambda r: queue(cat, r, WS_BASE, _market(r), _filter(r)),
        "recently_played": lambda r: recently_played(cat, r, WS_BASE),
        "register": lambda r: cluster(cat, r),
    }


def ws_states(cat: Any) -> dict[str, Callable[[Any], Any]]:
    """Entity kind -> presenter of its `subscribe` answer (a subscribe's result, a `resync` push)."""
    return {DEVICE_GROUP: lambda c: cluster(cat, c)}


def ws_pushes(cat: Any) -> dict[str, Callable[[Any], Any]]:
    """Push type -> presenter of its payload (applied once per push, before it reaches any socket)."""
    return {PLAYER_CHANGED: lambda c: cluster(cat, c)}
