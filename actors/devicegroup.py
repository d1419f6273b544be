"""DeviceGroupEntity: one per user (entity id = user id). The user's Connect devices and playback.

Every command runs against a *working copy* of the state (`_Txn`: a shallow copy of the player dict,
copies of the device dicts it touches). When it succeeds the difference becomes ONE compact record
(only the changed fields) and the entity applies that record to itself through `apply`, the same
code a replay runs, so handle and replay cannot disagree. A refusal raises before anything is
applied: state unchanged by construction.

Time: the server clock in `cmd.now_ms` is the only clock. Position is (position_as_of_timestamp,
timestamp, playback_speed); a track that runs out while playing is advanced lazily: at the start
of the next command, and by `tick()` (every TICK_MS while active) so devices get the new track
and its prefetch list without asking. The advance is computed at the exact end time of each track,
so it does not depend on when it runs. See docs/connect.md for shapes, timings and errors.

The ops live with their idea: devices and registration (actors/devicegroup_devices.py), playback
commands (actors/devicegroup_playback.py), the user's market (actors/devicegroup_market.py), what
may play, takedowns and autoplay (actors/devicegroup_entitlements.py), listening reports
(actors/devicegroup_listening.py), offline uploads and the private session
(actors/devicegroup_events.py, plays in actors/devicegroup_plays.py), the data export
(actors/devicegroup_rights.py); the working copy and the timings in actors/devicegroup_txn.py, what
is persisted in actors/devicegroup_records.py. This module is the entity: the contract, the helpers
every op shares, the cluster and the reads.
"""
from __future__ import annotations

import hashlib
from typing import Any

from actors.args import Args, int_arg
from actors.devicegroup_counted import CountedWindow
from actors.devicegroup_devices import DeviceOps
from actors.devicegroup_entitlements import EntitlementOps
from actors.devicegroup_events import EventOps
from actors.devicegroup_listening import ListeningOps
from actors.devicegroup_market import MarketOps
from actors.devicegroup_playback import PlaybackOps
from actors.devicegroup_plays import PlayIndex
from actors.devicegroup_records import KEEP, GroupChange, GroupSnapshot, UserMarket
from actors.devicegroup_rights import RightsOps
from actors.devicegroup_txn import (
    COUNTED_WINDOW,
    DEVICE_STATE_CHANGED,
    DEVICES_DISAPPEARED,
    HEARTBEAT_INTERVAL_MS,
    HEARTBEAT_TIMEOUT_MS,
    OFFLINE_GRACE_MS,
    PLAYER_CHANGED,
    PLAYER_STATE_CHANGED,
    RECENT_MAX,
    TICK_MS,
    _err,
    _playlist_id,
    _Txn,
)
from actors.entity import SYSTEM, Command, Entity, Env, Event, OpSpec, Outcome, op
from actors.player_state import (
    OrderCache,
    context_index,
    ended_at,
    extrapolate,
    has_next,
    has_prev,
    new_player,
    settle,
    upcoming,
)
from catalog import find_track
from protocols.errors import ErrorCode
from protocols.listening import ListeningEvent
from protocols.messages import DEVICE_GROUP, PLAYLIST
from protocols.wire import ConnAddress


class DeviceGroupEntity(DeviceOps, PlaybackOps, MarketOps, EntitlementOps, ListeningOps, EventOps, RightsOps,
                        Entity):
    kind = DEVICE_GROUP
    per_user = True
    tick_ms = TICK_MS

    def __init__(self, entity_id: str, env: Env) -> None:
        super().__init__(entity_id, env)
        cfg = env.config or {}
        self.heartbeat_interval_ms = int(cfg.get("connect_heartbeat_interval_ms", HEARTBEAT_INTERVAL_MS))
        self.heartbeat_timeout_ms = int(cfg.get("connect_heartbeat_timeout_ms", HEARTBEAT_TIMEOUT_MS))
        self.offline_grace_ms = int(cfg.get("connect_offline_grace_ms", OFFLINE_GRACE_MS))
        self._reset()

    def _reset(self) -> None:
        self.devices: dict[str, dict] = {}     # id -> {id,name,type,volume_percent,supports_volume,
        #                                         is_restricted,online,off_since,conn}
        self.active: str | None = None
        self.last_active: str | None = None    # the device that was active when it went offline
        self.p: dict = new_player()
        self.market = UserMarket()             # the account facts (p["market"], p["explicit_filter"] mirror it)
        self.revision = 0                      # cluster revision: +1 per push
        self.fence = 0                         # revision of the last change of active device
        self.recent: list[list] = []           # [[played_at_ms, uri, context_uri], ...] oldest first
        self.streams: dict[str, int] = {}      # track uri -> streams
        self.counted_events = CountedWindow(COUNTED_WINDOW)   # event ids that counted (actors/devicegroup_counted.py)
        self.counted_plays = CountedWindow(COUNTED_WINDOW)    # play keys that counted
        self.play_floor = 0                    # every playback id <= this is treated as counted
        self.plays = PlayIndex(self.id)        # plays of the last 30 days (duplicates, overlaps)
        # soft state, never persisted: liveness is not durable (unknown after activation = now)
        self._seen: dict[str, int] = {}
        self._oc = OrderCache()

    # == contract ===================================================================================
    # Entity.handle: the op table is the @op declarations below (docs/connect.md)
    def authorize(self, cmd: Command, spec: OpSpec) -> str | None:
        pr = cmd.principal
        if not pr.system:
            if pr.user_id != self.id:
                raise _err(ErrorCode.FORBIDDEN, "a user controls only their own devices")
            if spec.control and not pr.premium:
                raise _err(ErrorCode.PREMIUM_REQUIRED, "playback control requires Spotify Premium")
        if spec.fenced:
            self._check_fence(cmd.args)
        return "system" if pr.system else "user"

    def run(self, spec: OpSpec, cmd: Command, a: Args) -> Outcome:
        out = spec.fn(self, cmd, a)
        pr = cmd.principal
        if cmd.origin is not None and not pr.system:     # any command from a device is a sign of life
            did = self._sender(cmd)
            if did is not None and self.devices[did]["online"]:
                self._seen[did] = cmd.now_ms
        return out

    def apply(self, rec: dict) -> None:
        self._apply(GroupChange.from_wire(rec))

    def _apply(self, rec: GroupChange) -> None:
        if rec.player:
            self.p = {**self.p, **rec.player}
        if rec.market is not None:
            self.market = rec.market.over(self.market)
            self.p = {**self.p, **self.market.mirror()}
        for did, dev in rec.devices.items():
            if dev is None:
                self.devices.pop(did, None)
                self._seen.pop(did, None)
            else:
                self.devices[did] = dev
        if rec.active is not KEEP:
            self.active = rec.active
        if rec.last_active is not KEEP:
            self.last_active = rec.last_active
        if rec.revision is not None:
            self.revision = rec.revision
        if rec.fence is not None:
            self.fence = rec.fence
        if rec.play is not None:
            play = rec.play
            self.counted_events.add(play.event_id)
            evicted = self.counted_plays.add(play.play_key)
            if evicted is not None and evicted > self.play_floor:
                self.play_floor = evicted
            uri = play.track_uri
            self.streams[uri] = self.streams.get(uri, 0) + 1
            if not play.private:
                self.recent.append(play.recent())
                if len(self.recent) > RECENT_MAX:
                    del self.recent[: len(self.recent) - RECENT_MAX]
        for w in rec.events:
            self._apply_event(ListeningEvent.from_wire(w))

    def snapshot(self) -> dict:
        return GroupSnapshot(dict(self.devices), self.active, self.last_active, dict(self.p), self.revision,
                             self.fence, list(self.recent), dict(self.streams), self.counted_events.to_wire(),
                             self.counted_plays.to_wire(), self.play_floor, self.plays.to_wire(),
                             self.market).to_wire()

    def restore(self, data: dict) -> None:
        self._reset()
        snap = GroupSnapshot.from_wire(data)
        self.devices = snap.devices
        self.active = snap.active
        self.last_active = snap.last_active
        self.market = snap.market
        self.p = {**snap.player, **snap.market.mirror()}
        self.revision = snap.revision
        self.fence = snap.fence
        self.recent = snap.recent
        self.streams = snap.streams
        self.counted_events = CountedWindow(COUNTED_WINDOW, snap.counted_events)
        self.counted_plays = CountedWindow(COUNTED_WINDOW, snap.counted_plays)
        self.play_floor = snap.play_floor
        self.plays = PlayIndex.from_wire(snap.plays, self.id)

    def tick(self, now_ms: int) -> Outcome | None:
        t: _Txn | None = None
        end = ended_at(self.p)
        if end is not None and now_ms >= end:
            t = _Txn(self, now_ms)
            self._settle(t)
            t.set_reason(PLAYER_STATE_CHANGED)
        for did, d in self.devices.items():
            if d["online"]:
                seen = self._seen.get(did)
                if seen is None:                      # activated from storage: start the clock now
                    self._seen[did] = now_ms
                elif now_ms - seen >= self.heartbeat_timeout_ms:
                    t = t or _Txn(self, now_ms)
                    self._go_offline(t, did)
                    t.set_reason(DEVICE_STATE_CHANGED)
            elif d["off_since"] is not None and now_ms - d["off_since"] >= self.offline_grace_ms:
                t = t or _Txn(self, now_ms)
                t.devs[did] = None
                if t.last_active == did:
                    t.last_active = None
                t.set_reason(DEVICES_DISAPPEARED)
        if t is None:
            return None
        return self._commit(t)

    def idle(self) -> bool:
        return not any(d["online"] for d in self.devices.values())

    # == helpers ====================================================================================
    def _commit(self, t: _Txn, reply: Any = None, *, reply_cluster: bool = False,
                seen_snapshot: str | None = None) -> Outcome:
        rec = t.record()
        if not rec:
            return Outcome(reply=reply)
        effects = self._listener_effects(self.p["context_uri"], t.p["context_uri"], seen_snapshot)
        wire = rec.to_wire()
        self._apply(rec)
        events = []
        if t.reason is not None:
            cl = self.cluster(t.reason, t.now)
            if t.note is not None:
                cl["unavailable"] = t.note
            events.append(Event(PLAYER_CHANGED, cl))
            if reply_cluster:
                reply = dict(cl, heartbeat_interval_ms=self.heartbeat_interval_ms,
                             heartbeat_timeout_ms=self.heartbeat_timeout_ms)
        return Outcome(reply=reply, records=[wire], events=events, effects=effects)

    def _listener_effects(self, old_ctx: str | None, new_ctx: str | None,
                          seen_snapshot: str | None = None) -> list[Command]:
        """Follow the playing playlist. `seen_snapshot` is the playlist version the gateway read the
        entries at: if the playlist changed before add_listener lands, it sends context_changed."""
        if old_ctx == new_ctx:
            return []
        out = []
        old_pl, new_pl = _playlist_id(old_ctx), _playlist_id(new_ctx)
        if old_pl:
            out.append(Command(PLAYLIST, old_pl, "remove_listener", {"user_id": self.id}, SYSTEM))
        if new_pl:
            args = {"user_id": self.id}
            if seen_snapshot:
                args["snapshot_id"] = seen_snapshot
            out.append(Command(PLAYLIST, new_pl, "add_listener", args, SYSTEM))
        return out

    def _check_fence(self, a: dict) -> None:
        rev = int_arg(a, "revision")
        if rev is None:
            return
        if rev < self.fence:
            raise _err(ErrorCode.CONFLICT,
                       f"revision {rev} predates the last transfer (revision {self.fence}); "
                       f"apply the latest cluster first", revision=self.revision, fence=self.fence)

    def _dur(self, uri: str) -> int:
        t = self._track(uri)
        return t.duration_ms if t is not None else 0

    def _track(self, uri: str):
        return find_track(self.env.catalog, uri)

    def _settle(self, t: _Txn) -> bool:
        end = ended_at(t.p)
        if end is None or t.now < end:
            return False
        return settle(t.p, self._oc.get(t.p), self._dur, t.now, self._ok(t.p), self._related)

    def _view(self, now: int) -> dict:
        """The player as of `now` without committing (reads)."""
        p = self.p
        end = ended_at(p)
        if end is not None and now >= end:
            p = dict(p)
            settle(p, self._oc.get(p), self._dur, now, self._ok(p), self._related)
        return p

    def _sender(self, cmd: Command) -> str | None:
        """The registered device that sent this command (by its websocket, else the token's device)."""
        if cmd.origin is not None:
            o = ConnAddress.parse(cmd.origin)
            for did, d in self.devices.items():
                if d["conn"] == o:
                    return did
        did = cmd.principal.device_id
        return did if did is not None and did in self.devices else None

    def _target(self, t: _Txn, cmd: Command, *, fallback: bool = False) -> str:
        """`device_id` if given, else the active device, else (fallback: play) the sending device."""
        did = cmd.args.get("device_id")
        if did is not None:
            if not isinstance(did, str):
                raise _err(ErrorCode.INVALID_FIELD, "device_id must be a string")
            d = t.dev(did)
            if d is None:
                raise _err(ErrorCode.NOT_FOUND, f"device not found: {did}")
            if not d["online"]:
                raise _err(ErrorCode.BAD_REQUEST, f"device {did} is offline", device_id=did)
            return did
        if t.active is not None:
            return t.active
        if fallback:
            s = self._sender(cmd)
            if s is not None and t.dev(s)["online"]:
                return s
        raise _err(ErrorCode.NO_ACTIVE_DEVICE, "no active device")

    def _active_target(self, t: _Txn, cmd: Command) -> str:
        did = self._target(t, cmd)
        if did != t.active:
            raise _err(ErrorCode.NO_ACTIVE_DEVICE, f"device {did} is not the active device; transfer first")
        self._controllable(t, cmd, did)
        return did

    def _controllable(self, t: _Txn, cmd: Command, did: str) -> None:
        if t.dev(did)["is_restricted"] and not cmd.principal.system and self._sender(cmd) != did:
            raise _err(ErrorCode.DEVICE_NOT_CONTROLLABLE, f"device {did} accepts no remote commands")

    @staticmethod
    def _activate(t: _Txn, did: str) -> None:
        t.active = did
        t.last_active = did

    @staticmethod
    def _go_offline(t: _Txn, did: str) -> None:
        d = t.edit(did)
        d["online"] = False
        d["off_since"] = t.now
        if t.active == did:                 # pause at the extrapolated position; anyone may resume
            p = t.p
            if p["playing"]:
                p["position_ms"] = extrapolate(p, t.now)
                p["timestamp_ms"] = t.now
                p["playing"] = False
            t.active = None

    def _seed(self, cmd: Command) -> int:
        s = cmd.args.get("seed")
        if isinstance(s, int) and not isinstance(s, bool):
            return s & 0xFFFFFFFF
        h = hashlib.blake2b(f"{self.id}:{self.revision}:{cmd.now_ms}:{cmd.op_id}".encode(), digest_size=4)
        return int.from_bytes(h.digest(), "big")

    # == domain values (gateway/presenters.py turns them into what clients read) ==================
    def _device_value(self, d: dict) -> dict:
        v = {"id": d["id"], "name": d["name"], "type": d["type"], "volume_percent": d["volume_percent"],
             "supports_volume": d["supports_volume"], "is_restricted": d["is_restricted"],
             "online": d["online"], "active": d["id"] == self.active}
        if self.p["private_session"]:
            v["private_session"] = True       # Spotify's is_private_session (present only when on)
        return v

    def cluster(self, reason: str | None, now: int) -> dict:
        """The whole device group as pushed to every device (docs/connect.md): `player.track_uri`
        and the devices as domain values (the gateway presents them)."""
        p = self.p
        order = self._oc.get(p)
        active = self.active
        has_item = p["uri"] is not None
        return {
            "active_device_id": active,
            "devices": [self._device_value(d) for d in self.devices.values()],
            "player": {
                "track_uri": p["uri"] if has_item else None,
                "context": ({"uri": p["context_uri"], "index": context_index(p, order)}
                            if (p["context_uri"] is not None or p["tracks"]) else None),
                "queue": list(p["queue"]),
                "shuffle": p["shuffle"],
                "repeat": p["repeat"],
                "is_playing": p["playing"],
                "position_as_of_timestamp": p["position_ms"],
                "timestamp": p["timestamp_ms"],
                "playback_speed": 1.0 if p["playing"] else 0.0,
                "duration": p["duration_ms"],
                "volume_percent": self.devices[active]["volume_percent"] if active else None,
                "playback_id": p["playback_id"] if has_item else None,
                "market": p["market"],
                "explicit_filter": p["explicit_filter"],
                "autoplay": {"enabled": p["autoplay"], "active": p["autoplaying"], "from": p["autoplay_from"]},
            },
            "revision": self.revision,
            "reason": reason,
            "server_time_ms": now,
            "next_tracks": upcoming(p, order, 2, prefetch=True, ok=self._ok(p)) if has_item else list(p["queue"][:2]),
        }

    def _playing(self, p: dict, now: int, *, full: bool) -> dict:
        order = self._oc.get(p)
        has_item = p["uri"] is not None
        dis = {}
        if not p["playing"]:
            dis["pausing"] = True
        if p["playing"] or not has_item:
            dis["resuming"] = True
        if not has_item:
            dis["seeking"] = True
        ok = self._ok(p)
        if not has_next(p, order, ok) and not (p["autoplay"] and self._related(p)):
            dis["skipping_next"] = True
        if not has_prev(p, order, ok):
            dis["skipping_prev"] = True
        out: dict[str, Any] = {}
        if full:
            out["device"] = self._device_value(self.devices[self.active])
            out["repeat"] = p["repeat"]
            out["shuffle"] = p["shuffle"]
        out.update({"context_uri": p["context_uri"], "timestamp": p["timestamp_ms"],
                    "progress_ms": extrapolate(p, now) if has_item else None, "is_playing": p["playing"],
                    "uri": p["uri"], "disallows": dis, "market": p["market"],
                    "explicit_filter": p["explicit_filter"],
                    "autoplay": {"enabled": p["autoplay"], "active": p["autoplaying"], "from": p["autoplay_from"]}})
        return out

    # == reads ======================================================================================
    @op("subscribe", role="user")
    def _op_subscribe(self, cmd: Command, a: Args) -> Outcome:
        """The gateway subscribes a connection to this group (the host then routes our pushes to
        its gateway). Every push carries the whole cluster, so the answer is simply the current
        cluster (reason null), whatever `since` says."""
        return Outcome(reply=self.cluster(None, cmd.now_ms))

    @op("unsubscribe", role="user")
    def _op_unsubscribe(self, cmd: Command, a: Args) -> Outcome:
        return Outcome()                        # the host handles it when it has an origin

    @op("state", role="user")
    def _op_state(self, cmd: Command, a: Args) -> Outcome:
        if self.active is None:
            return Outcome(reply=None)
        return Outcome(reply=self._playing(self._view(cmd.now_ms), cmd.now_ms, full=True))

    @op("currently_playing", role="user")
    def _op_currently_playing(self, cmd: Command, a: Args) -> Outcome:
        p = self._view(cmd.now_ms)
        if self.active is None or p["uri"] is None:
            return Outcome(reply=None)
        return Outcome(reply=self._playing(p, cmd.now_ms, full=False))

    @op("devices", role="user")
    def _op_devices(self, cmd: Command, a: Args) -> Outcome:
        return Outcome(reply={"devices": [self._device_value(d) for d in self.devices.values() if d["online"]]})

    @op("queue", role="user")
    def _op_queue(self, cmd: Command, a: Args) -> Outcome:
        p = self._view(cmd.now_ms)
        order = self._oc.get(p)
        return Outcome(reply={
            "currently_playing": p["uri"],
            "queue": upcoming(p, order, 20, prefetch=False, ok=self._ok(p)),
            "market": p["market"],
            "explicit_filter": p["explicit_filter"],
        })
