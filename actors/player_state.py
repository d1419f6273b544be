"""The playback state machine of a device group: pure functions over one small player dict.

No catalog, no clock, no randomness of its own: the caller passes `resolve(uri) -> duration_ms`,
`ok(uri) -> bool` (may it play here: the user's market, docs/rights.md; None = every item may), the
time `at` of every change (the server clock), and the shuffle seed (taken from the command and
stored in the state, so a replay reproduces the same order). Navigation steps over the items `ok`
refuses: in a context, and in the user queue, as Spotify skips tracks not playable in the market.

The player dict (every value msgpack-able; lists are never mutated in place, they are replaced, so
a shallow copy is a safe working copy and `old is new` tells whether a field changed). It is also
what a device group persists (actors/devicegroup_records.py; records before version 2 used the
short names in brackets, and are read back):

  context_uri   context uri (playlist / album) or None (a list of `uris` was played)       [ctx]
  tracks        the context's entries in their natural order: [[entry_id, uri], ...]
  order_pos     index in the *play order* of the last context entry played (-1: before the first) [pos]
  in_order      True when the current item is order[order_pos]; False when it came from the user
                queue or its entry was removed from the playlist while it played ("detached").
                Either way the next context track is order[order_pos + 1] and `previous` goes back
                to order[order_pos].                                                          [on]
  uri           the current item's track uri (None: nothing loaded)
  duration_ms   its duration                                                                  [dur]
  queue         the user queue (track uris), played before the context continues
  shuffle       bool; seed and anchor define the shuffled order (see compute_order)
  repeat        "off" | "context" | "track"
  playing       bool: the position advances with the server clock
  position_ms   position_as_of_timestamp, in ms into the item                            [position]
  timestamp_ms  the server time position_ms was taken at                                      [ts]
  playback_id   +1 every time an item starts (a listening report can name it)                [pid]
  market        the user's market (the account's country; None: unknown): a mirror of the device
                group's UserMarket (actors/devicegroup_records.py), never stored as a player field
  explicit_filter  the account's explicit content filter (explicit tracks don't play): a mirror of
                the same UserMarket, never stored as a player field
  autoplay      bool (setting): when the context ends, continue with related tracks (docs/rights.md)
  autoplaying   bool: the tracks playing are autoplay's, not a context the listener chose
  autoplay_from the context uri that ended into autoplay (None: a list of uris, or not autoplaying)

Play order: unshuffled, the natural order. Shuffled: the anchor entry (the track playing when
shuffle was switched on, or the offset of a play) first, then every other entry sorted by
blake2b(seed:entry_id). Because the order is a function of (seed, entry ids), entries inserted into
a playing playlist slot in without disturbing the relative order of the others, and the current
entry is found again by its id (librespot #1687).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

REPEAT_STATES = ("off", "context", "track")
MAX_SETTLE_STEPS = 500          # bound on tracks auto-advanced in one settle (all-zero-length contexts)

Resolve = Callable[[str], int]
Ok = Callable[[str], bool] | None
More = Callable[[dict], list] | None     # autoplay: the entries to continue an ended context with


def new_player() -> dict:
    return {"context_uri": None, "tracks": [], "order_pos": -1, "in_order": False, "uri": None,
            "duration_ms": 0, "queue": [], "shuffle": False, "seed": 0, "anchor": None, "repeat": "off",
            "playing": False, "position_ms": 0, "timestamp_ms": 0, "playback_id": 0,
            "private_session": False, "market": None, "explicit_filter": False, "autoplay": False,
            "autoplaying": False, "autoplay_from": None}


# the names records before version 2 stored (actors/devicegroup_records.py reads them back)
LEGACY_NAMES = {"ctx": "context_uri", "pos": "order_pos", "on": "in_order", "dur": "duration_ms",
                "position": "position_ms", "ts": "timestamp_ms", "pid": "playback_id"}


# -- position ----------------------------------------------------------------------------------
def extrapolate(p: dict, now: int) -> int:
    """position_as_of_timestamp + (now - timestamp) * speed, capped at the duration."""
    if p["uri"] is None:
        return 0
    pos = p["position_ms"]
    if p["playing"]:
        pos += max(0, now - p["timestamp_ms"])       # a clock that went backwards never rewinds
    return min(pos, p["duration_ms"])


def ended_at(p: dict) -> int | None:
    """Server time at which the current item ends, if it is playing."""
    if not p["playing"] or p["uri"] is None:
        return None
    return p["timestamp_ms"] + max(0, p["duration_ms"] - p["position_ms"])


# -- order ------------------------------------------------------------------------------------
def _key(seed: int, eid) -> bytes:
    return hashlib.blake2b(f"{seed}:{eid}".encode(), digest_size=8).digest()


def compute_order(tracks: list, shuffle: bool, seed: int, anchor) -> list[int] | range:
    n = len(tracks)
    if not shuffle:
        return range(n)
    first = None
    if anchor is not None:
        for i, entry in enumerate(tracks):
            if entry[0] == anchor:
                first = i
                break
    rest = [i for i in range(n) if i != first]
    rest.sort(key=lambda i: _key(seed, tracks[i][0]))
    return ([first] if first is not None else []) + rest


class OrderCache:
    """Memo of the play order of the last tracks list seen (by identity: lists are never mutated)."""
    __slots__ = ("_key", "_order")

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._order: list[int] | range = range(0)

    def get(self, p: dict):
        k = self._key
        if k is not None and k[0] is p["tracks"] and k[1] == p["shuffle"] and k[2] == p["seed"] \
                and k[3] == p["anchor"]:
            return self._order
        self._order = compute_order(p["tracks"], p["shuffle"], p["seed"], p["anchor"])
        self._key = (p["tracks"], p["shuffle"], p["seed"], p["anchor"])
        return self._order


def context_index(p: dict, order) -> int | None:
    """Natural index in the context of the current item, if it is a context entry."""
    if p["in_order"] and 0 <= p["order_pos"] < len(order):
        return order[p["order_pos"]]
    return None


# -- navigation ---------------------------------------------------------------------------------
def _entry_ok(p: dict, order, k: int, ok: Ok) -> bool:
    return ok is None or ok(p["tracks"][order[k]][1])


def _next_pos(p: dict, order, ok: Ok = None) -> int | None:
    """The play-order index of the next context entry `ok` allows (wrapping once with repeat context)."""
    n = len(order)
    cand = p["order_pos"]
    for _ in range(n):
        cand += 1
        if cand >= n:
            if p["repeat"] != "context":
                return None
            cand = 0
        if _entry_ok(p, order, cand, ok):
            return cand
    return None


def _prev_pos(p: dict, order, ok: Ok = None) -> int | None:
    n = len(order)
    cand = p["order_pos"] - 1 if p["in_order"] else p["order_pos"]
    for _ in range(n):
        if cand < 0 or cand >= n:
            if not (p["repeat"] == "context" and n):
                return None
            cand = n - 1
        if _entry_ok(p, order, cand, ok):
            return cand
        cand -= 1
    return None


def _queue_ok(p: dict, ok: Ok) -> list:
    q = p["queue"]
    return q if ok is None else [u for u in q if ok(u)]


def has_next(p: dict, order, ok: Ok = None) -> bool:
    return bool(_queue_ok(p, ok)) or _next_pos(p, order, ok) is not None


def has_prev(p: dict, order, ok: Ok = None) -> bool:
    return p["uri"] is not None and _prev_pos(p, order, ok) is not None


def load(p: dict, uri: str, dur: int, at: int, position: int = 0) -> None:
    """Start an item (a new playback id)."""
    p["uri"] = uri
    p["duration_ms"] = dur
    p["position_ms"] = max(0, min(position, dur))
    p["timestamp_ms"] = at
    p["playback_id"] = p["playback_id"] + 1


def skip_next(p: dict, order, resolve: Resolve, at: int, *, auto: bool, ok: Ok = None) -> bool:
    """Move to the next item; False (nothing changed) at the end of the context with repeat off.

    auto=True is the current track ending by itself: repeat "track" plays it again (if it still
    may). A user's `next` (auto=False) moves on even with repeat "track", as Spotify's clients do.
    Queue items `ok` refuses are dropped on the way."""
    if auto and p["repeat"] == "track" and p["uri"] is not None and (ok is None or ok(p["uri"])):
        load(p, p["uri"], p["duration_ms"], at)
        return True
    q = p["queue"]
    while q:
        head, q = q[0], q[1:]
        if ok is None or ok(head):
            p["queue"] = q
            p["in_order"] = False
            load(p, head, resolve(head), at)
            return True
    k = _next_pos(p, order, ok)
    if k is None:
        return False
    p["queue"] = q
    return _enter(p, order, k, resolve, at)


def skip_prev(p: dict, order, resolve: Resolve, at: int, ok: Ok = None) -> bool:
    return _enter(p, order, _prev_pos(p, order, ok) if p["uri"] is not None else None, resolve, at)


def _enter(p: dict, order, k: int | None, resolve: Resolve, at: int, position: int = 0) -> bool:
    """Start order[k], the context entry at play-order index k; False (nothing changed) for None."""
    if k is None:
        return False
    p["order_pos"] = k
    p["in_order"] = True
    uri = p["tracks"][order[k]][1]
    load(p, uri, resolve(uri), at, position)
    return True


def first_ok(p: dict, order, ok: Ok = None) -> int | None:
    """The play-order index of the first context entry `ok` allows."""
    for k in range(len(order)):
        if _entry_ok(p, order, k, ok):
            return k
    return None


def end_of_context(p: dict, order, resolve: Resolve, at: int, ok: Ok = None) -> None:
    """The last track ended with repeat off: rewind to the first playable track of the order, paused."""
    p["playing"] = False
    k = first_ok(p, order, ok)
    if k is not None:
        _enter(p, order, k, resolve, at)
    else:                                   # a detached item in an emptied context: stop on it
        p["position_ms"] = 0
        p["timestamp_ms"] = at


def skip_or_end(p: dict, order, resolve: Resolve, at: int, ok: Ok = None) -> None:
    """Seek past the end: go to the next track, or end the context (repeat off)."""
    if not skip_next(p, order, resolve, at, auto=False, ok=ok):
        end_of_context(p, order, resolve, at, ok)


def continue_autoplay(p: dict, resolve: Resolve, at: int, ok: Ok, more: More) -> bool:
    """The context ended: with autoplay on, play the related entries `more(p)` gives (a new,
    uri-less context, marked autoplaying) from their first, keeping the play state. False (nothing
    changed) when autoplay is off or there is nothing to continue with."""
    if more is None or not p.get("autoplay"):
        return False
    entries = more(p)
    if not entries:
        return False
    came_from = p["autoplay_from"] if p.get("autoplaying") else p["context_uri"]
    trial = dict(p)
    if not load_context(trial, None, entries, None, 0, at, resolve, p["seed"], ok):
        return False
    p.update(trial)
    p["autoplaying"] = True
    p["autoplay_from"] = came_from
    return True


def settle(p: dict, order, resolve: Resolve, now: int, ok: Ok = None, more: More = None) -> bool:
    """Advance lazily past every item that ended by `now` (each next item starts exactly when the
    previous one ended, so the result does not depend on when settle runs). True if changed."""
    changed = False
    for _ in range(MAX_SETTLE_STEPS):
        end = ended_at(p)
        if end is None or now < end:
            return changed
        if not skip_next(p, order, resolve, end, auto=True, ok=ok):
            if continue_autoplay(p, resolve, end, ok, more):
                order = compute_order(p["tracks"], p["shuffle"], p["seed"], p["anchor"])
            else:
                end_of_context(p, order, resolve, end, ok)
        changed = True
    # only reachable with zero-length items on repeat: stop rather than spin
    p["playing"] = False
    p["position_ms"] = 0
    p["timestamp_ms"] = now
    return True


def upcoming(p: dict, order, k: int, *, prefetch: bool, ok: Ok = None) -> list[str]:
    """The next k item uris: for prefetch the repeat-track item repeats; otherwise the user queue,
    then the context (wrapping once with repeat context); items `ok` refuses are left out."""
    if k <= 0:
        return []
    if prefetch and p["repeat"] == "track" and p["uri"] is not None:
        return [p["uri"]]
    out = list(_queue_ok(p, ok)[:k])
    n = len(order)
    pos = p["order_pos"]
    steps = 0
    while len(out) < k and steps < n:
        pos += 1
        if pos >= n:
            if p["repeat"] != "context":
                break
            pos = 0
        steps += 1
        if _entry_ok(p, order, pos, ok):
            out.append(p["tracks"][order[pos]][1])
    return out


# -- loading, shuffle, context changes ---------------------------------------------------------
def load_context(p: dict, ctx: str | None, tracks: list, start: int | None, position: int, at: int,
                 resolve: Resolve, seed: int, ok: Ok = None) -> bool:
    """Play `tracks` (natural order) from natural index `start` (None: the order's first playable
    entry). False (p half-changed: the caller refuses the command) when `ok` refuses the entry
    asked for, or, without `start`, every entry."""
    p["context_uri"] = ctx
    p["tracks"] = tracks
    p["seed"] = seed
    p["anchor"] = tracks[start][0] if (p["shuffle"] and start is not None) else None
    order = compute_order(tracks, p["shuffle"], seed, p["anchor"])
    if start is not None:
        k = 0 if p["shuffle"] else start
        if not _entry_ok(p, order, k, ok):
            return False
    else:
        k = first_ok(p, order, ok)
        if k is None:
            return False
    _enter(p, order, k, resolve, at, position)
    return True


def _ref_index(p: dict, order) -> int | None:
    """Natural index of order[pos] (the last context entry played), if any."""
    return order[p["order_pos"]] if 0 <= p["order_pos"] < len(order) else None


def set_shuffle(p: dict, order, on: bool, seed: int) -> None:
    """Toggle shuffle keeping the current entry: on -> it becomes the anchor (first of the new
    order, so the rest of the context still plays); off -> back to its natural place."""
    ref = _ref_index(p, order)
    p["shuffle"] = on
    p["seed"] = seed if on else p["seed"]
    p["anchor"] = p["tracks"][ref][0] if (on and ref is not None) else None
    if ref is None:                    # nothing played from the context yet (pos -1)
        return
    new = compute_order(p["tracks"], on, p["seed"], p["anchor"])
    p["order_pos"] = new.index(ref)


def change_context(p: dict, old_order, new_tracks: list) -> None:
    """The playing playlist changed. Keep the current entry by its id, so the position (and the
    track, and what plays next) survive inserts, moves and removals elsewhere. If the current
    entry itself was removed the item keeps playing, detached: next is the first entry that
    followed it and still exists."""
    old_tracks = p["tracks"]
    ref = _ref_index(p, old_order)
    ref_eid = old_tracks[ref][0] if ref is not None else None
    p["tracks"] = new_tracks
    new_order = compute_order(new_tracks, p["shuffle"], p["seed"], p["anchor"])
    where: dict = {}
    for k in range(len(new_order) - 1, -1, -1):       # first occurrence wins
        where[new_tracks[new_order[k]][0]] = k
    if ref_eid is not None and ref_eid in where:
        p["order_pos"] = where[ref_eid]
        return
    start = p["order_pos"] + 1 if p["order_pos"] >= 0 else 0
    for k in range(start, len(old_order)):
        eid = old_tracks[old_order[k]][0]
        if eid in where:
            p["order_pos"] = where[eid] - 1
            break
    else:
        p["order_pos"] = len(new_order) - 1
    p["in_order"] = False
