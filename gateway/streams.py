"""Stream manifests on the active device's pushes, and their refresh (docs/rights.md "Manifests").

When a `player.changed` push reaches the connection of the group's active device (it became the
active player by play, next, transfer, or its track changed), this gateway adds `stream` to that
connection's copy of the payload: the manifest gateway/stream_sign.py builds from the cluster,
signed for this user and this device, bitrates by the socket's (live) product. "This device" is
the device the socket's token belongs to (its `sid`: what the edge can check against the token
that fetches), else, for a token without one, the Connect device id the socket registered. Other devices get the
shared frame, without URLs: a URL is for the device that plays.

Refresh: the entity has no clock and signs nothing, so the gateway that pushes to the device drives
it. While the device is the active player and playing, a timer at `refresh_at` (80% of the URL's
life) sends it a `stream.manifest` push with fresh URLs for the same tracks; the next
`player.changed` replaces the timer. A paused player's URLs are allowed to lapse: the resume's push
carries new ones.

A push that leaves the tracks as they were (volume, seek, pause) reuses the connection's last
manifest while it is fresh (before its refresh_at): signing nine URLs is most of the cost of a push
to the active device, and these pushes are most of the pushes. Such a push also keeps the refresh
timer it had (the same manifest refreshes at the same time), only with the newest state to refresh
from: cancelling and re-creating a timer per push was a tenth of this module's cost.

`personal` answers what the connection's copy ADDS to the shared payload (`{"stream": ...}`), so
gateway/subscriptions.py can write it into the push's shared JSON frame instead of encoding the
whole device group again for the active device.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.hub import Connection
from protocols import codec
from protocols.messages import DEVICE_GROUP, MessageType

STREAM_MANIFEST = MessageType.STREAM_MANIFEST.value


class Personal(dict):
    """`{"stream": manifest}`, what a connection's copy adds, with its JSON (the fragment
    gateway/subscriptions.py writes into the shared frame) kept beside it: a reused manifest is
    encoded once, not on every push that reuses it."""
    __slots__ = ("json",)

    def __init__(self, man: dict) -> None:
        super().__init__(stream=man)
        self.json: str | None = None


class _Refresh:
    """A connection's pending refresh: when, and from which device-group state."""
    __slots__ = ("at", "cluster", "handle")

    def __init__(self, at: float, cluster: dict, handle: asyncio.TimerHandle) -> None:
        self.at, self.cluster, self.handle = at, cluster, handle


class StreamManifests:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._timers: dict[str, _Refresh] = {}                 # connection id -> its refresh
        self._last: dict[str, tuple[tuple, Personal]] = {}     # connection id -> (what it covers, {"stream": manifest})
        self.refreshed = 0
        self.reused = 0

    def personal(self, conn: Connection, payload: Any) -> dict | None:
        """What this connection's copy adds to the shared payload (`{"stream": manifest}`), or None:
        the shared one as it is."""
        signer = self.ctx.signer
        device = conn.registered_device
        if signer is None or device is None or not isinstance(payload, dict) \
                or payload.get("active_device_id") != device:
            self._cancel(conn)
            self._last.pop(conn.id, None)
            return None
        p = conn.principal
        bound = p.device_id or device          # who the URLs are for: the token's device, else the registered one
        player = payload.get("player") or {}
        covers = ((player.get("track") or {}).get("uri"), tuple(payload.get("next_tracks") or ())[:2],
                  player.get("market"), p.product, bound)
        last = self._last.get(conn.id)
        if last is not None and last[0] == covers and time.time() < last[1]["stream"]["refresh_at"]:
            own = last[1]
            self.reused += 1
        else:
            man = signer.manifest(self.ctx.catalog, payload, p.user_id, bound, p.product)
            if man is None:
                self._cancel(conn)
                self._last.pop(conn.id, None)
                return None
            own = Personal(man)
            self._last[conn.id] = (covers, own)
        if player.get("is_playing"):
            self._schedule(conn, payload, own["stream"]["refresh_at"])
        else:
            self._cancel(conn)                 # a paused player's URLs may lapse
        return own

    def _schedule(self, conn: Connection, cluster: dict, at: float) -> None:
        r = self._timers.get(conn.id)
        if r is not None:
            if r.at == at:
                r.cluster = cluster            # the same manifest's refresh: same time, the newest state
                return
            r.handle.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - time.time())
        self._timers[conn.id] = _Refresh(at, cluster, loop.call_later(delay, self._refresh, conn))

    def _cancel(self, conn: Connection) -> None:
        r = self._timers.pop(conn.id, None)
        if r is not None:
            r.handle.cancel()

    def _refresh(self, conn: Connection) -> None:
        r = self._timers.pop(conn.id, None)
        signer = self.ctx.signer
        if r is None or conn.closed or conn.closing or signer is None or conn.registered_device is None:
            return
        cluster = r.cluster
        p = conn.principal                 # the product now: a downgrade lowers the bitrates at once
        man = signer.manifest(self.ctx.catalog, cluster, p.user_id, p.device_id or conn.registered_device, p.product)
        if man is None:
            return
        self.refreshed += 1
        last = self._last.get(conn.id)
        if last is not None:
            self._last[conn.id] = (last[0], Personal(man))
        conn.send(codec.push(STREAM_MANIFEST, f"{DEVICE_GROUP}:{p.user_id}", 0, man))
        self._schedule(conn, cluster, man["refresh_at"])

    def drop(self, conn: Connection) -> None:
        self._cancel(conn)
        self._last.pop(conn.id, None)

    def close(self) -> None:
        for r in self._timers.values():
            r.handle.cancel()
        self._timers.clear()
        self._last.clear()
