"""The device group's timings and bounds, its push reasons, and `_Txn`: the working copy of one
command (actors/devicegroup.py describes how a command becomes one record)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from actors.devicegroup_records import MIRRORED, CountedPlay, GroupChange, UserMarket
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import MessageType

if TYPE_CHECKING:
    from actors.devicegroup import DeviceGroupEntity

# -- timings and bounds (docs/connect.md) ---------------------------------------------------------
HEARTBEAT_INTERVAL_MS = 10_000     # what devices are told to send
HEARTBEAT_TIMEOUT_MS = 30_000      # silent this long -> offline (3 missed heartbeats)
OFFLINE_GRACE_MS = 300_000         # offline this long -> removed from the device list
TICK_MS = 1_000
STREAM_THRESHOLD_MS = 30_000       # a play counts as a stream once ms_played reaches this
RECENT_MAX = 50
COUNTED_WINDOW = 1_000             # counted event ids / play keys remembered (exactly-once window)
MAX_DEVICES = 50
MAX_QUEUE = 1_000
MAX_CONTEXT = 10_000               # a playlist holds at most 10,000 items
AUTOPLAY_BATCH = 10                # related tracks autoplay continues with at a time

# -- push reasons -----------------------------------------------------------------------------------
NEW_DEVICE = "new_device"
DEVICE_STATE_CHANGED = "device_state_changed"
DEVICES_DISAPPEARED = "devices_disappeared"
VOLUME_CHANGED = "volume_changed"
PLAYER_STATE_CHANGED = "player_state_changed"
TRACK_UNAVAILABLE = "track_unavailable"     # a takedown moved playback off its track (docs/rights.md)
_REASON_RANK = {PLAYER_STATE_CHANGED: 0, VOLUME_CHANGED: 1, DEVICE_STATE_CHANGED: 2, NEW_DEVICE: 3,
                DEVICES_DISAPPEARED: 4, TRACK_UNAVAILABLE: 5}

PLAYER_CHANGED = MessageType.PLAYER_CHANGED.value


def _err(code: ErrorCode, msg: str, **details) -> SyncopateError:
    return SyncopateError(code, msg, **details)


def _playlist_id(uri: str | None) -> str | None:
    if uri and uri.startswith("spotify:playlist:"):
        return uri[len("spotify:playlist:"):]
    return None


class _Txn:
    """The working copy one command (or tick) changes; `record()` is the difference."""
    __slots__ = ("active", "devs", "e", "events", "fenced", "last_active", "market", "note", "now", "p", "play",
                 "reason")

    def __init__(self, e: DeviceGroupEntity, now: int) -> None:
        self.e = e
        self.now = now
        self.p = dict(e.p)
        self.devs: dict[str, dict | None] = {}
        self.active = e.active
        self.last_active = e.last_active
        self.reason: str | None = None
        self.play: CountedPlay | None = None
        self.events: list = []             # ListeningEvent wire forms (a live report's play)
        self.fenced = False
        self.note: dict | None = None      # pushed with the cluster, not stored (a takedown's why)
        self.market: UserMarket = e.market  # p["market"], p["explicit_filter"] mirror it (set_market)

    def set_market(self, market: UserMarket) -> None:
        self.market = market
        self.p.update(market.mirror())

    def dev(self, did: str) -> dict | None:
        if did in self.devs:
            return self.devs[did]
        return self.e.devices.get(did)

    def edit(self, did: str) -> dict:
        d = self.devs.get(did)
        if d is None:
            d = self.devs[did] = dict(self.e.devices[did])
        return d

    def set_reason(self, reason: str) -> None:
        if self.reason is None or _REASON_RANK[reason] > _REASON_RANK[self.reason]:
            self.reason = reason

    def record(self) -> GroupChange:
        e = self.e
        old = e.p
        # p["market"] and p["explicit_filter"] mirror the market, which the record carries typed
        rec = GroupChange(player={k: v for k, v in self.p.items()
                                  if k not in MIRRORED and not (old[k] is v or old[k] == v)},
                          devices=self.devs, play=self.play, events=self.events,
                          market=self.market if self.market != e.market else None)
        if self.active != e.active:
            rec.active = self.active
        if self.last_active != e.last_active:
            rec.last_active = self.last_active
        if self.reason is not None:
            rec.revision = e.revision + 1
            if self.fenced or (self.active is not None and self.active != e.active):
                rec.fence = e.revision + 1          # a new active device: older revisions are fenced off
        return rec

