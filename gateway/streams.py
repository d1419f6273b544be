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
to the active device, and these pushes are most of the pushes.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.hub import Connection
from protocols import codec
from protocols.messages import DEVICE_GROUP, MessageType

STREAM_MANIFEST = MessageType.STREAM_MANIFEST.value


class StreamManifests:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._timers: dict[str, asyncio.TimerHandle] = {}      # connection id -> its refresh
        self._last: dict[str, tuple[tuple, dict]] = {}         # connection id -> (what it covers, manifest)
        self.refreshed = 0
        self.reused = 0

    def personal(self, conn: Connection, payload: Any) -> Any | None:
        """The payload this connection alone gets (with `stream`), or None: the shared one."""
        self._cancel(conn)
        signer = self.ctx.signer
        device = conn.registered_device
        if signer is None or device is None or not isinstance(payload, dict) \
                or payload.get("active_device_id") != device:
            self._last.pop(conn.id, None)
            return None
        p = conn.principal
        bound = p.device_id or device          # who the URLs are for: the token's device, else the registered one
        player = payload.get("player") or {}
        covers = ((player.get("track") or {}).get("uri"), tuple(payload.get("next_tracks") or ())[:2],
                  player.get("market"), p.product, bound)
        last = self._last.get(conn.id)
        if last is not None and last[0] == covers and time.time() < last[1]["refresh_at"]:
            man = last[1]
            self.reused += 1
        else:
            man = signer.manifest(self.ctx.catalog, payload, p.user_id, bound, p.product)
            if man is None:
                self._last.pop(conn.id, None)
                return None
            self._last[conn.id] = (covers, man)
        if (payload.get("player") or {}).get("is_playing"):
            self._schedule(conn, payload, man["refresh_at"])
        return {**payload, "stream": man}

    def _schedule(self, conn: Connection, cluster: dict, at: float) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - time.time())
        self._timers[conn.id] = loop.call_later(delay, self._refresh, conn, cluster)

    def _cancel(self, conn: Connection) -> None:
        h = self._timers.pop(conn.id, None)
        if h is not None:
            h.cancel()

    def _refresh(self, conn: Connection, cluster: dict) -> None:
        self._timers.pop(conn.id, None)
        signer = self.ctx.signer
        if conn.closed or conn.closing or signer is None or conn.registered_device is None:
            return
        p = conn.principal                 # the product now: a downgrade lowers the bitrates at once
        man = signer.manifest(self.ctx.catalog, cluster, p.user_id, p.device_id or conn.registered_device, p.product)
        if man is None:
            return
        self.refreshed += 1
        last = self._last.get(conn.id)
        if last is not None:
            self._last[conn.id] = (last[0], man)
        conn.send(codec.push(STREAM_MANIFEST, f"{DEVICE_GROUP}:{p.user_id}", 0, man))
        self._schedule(conn, cluster, man["refresh_at"])

    def drop(self, conn: Connection) -> None:
        self._cancel(conn)
        self._last.pop(conn.id, None)

    def close(self) -> None:
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        self._last.clear()
