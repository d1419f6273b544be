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
"""
from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from actors.args import Args, Bool, Choice, Int, Str, Uri, address, int_arg
from actors.devicegroup_records import KEEP, CountedPlay, GroupChange, GroupSnapshot
from actors.entity import SYSTEM, Command, Entity, Env, Event, OpSpec, Outcome, op
from actors.player_state import (
    REPEAT_STATES,
    OrderCache,
    change_context,
    context_index,
    ended_at,
    extrapolate,
    has_next,
    has_prev,
    load_context,
    new_player,
    set_shuffle,
    settle,
    skip_next,
    skip_or_end,
    skip_prev,
    upcoming,
)
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import DEVICE_GROUP, PLAYLIST, MessageType
from catalog import require
from protocols.uris import parse_uri
from protocols.wire import ConnAddress

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
API_BASE = "https://api.spotify.com/v1"

# -- push reasons -----------------------------------------------------------------------------------
NEW_DEVICE = "new_device"
DEVICE_STATE_CHANGED = "device_state_changed"
DEVICES_DISAPPEARED = "devices_disappeared"
VOLUME_CHANGED = "volume_changed"
PLAYER_STATE_CHANGED = "player_state_changed"
_REASON_RANK = {PLAYER_STATE_CHANGED: 0, VOLUME_CHANGED: 1, DEVICE_STATE_CHANGED: 2, NEW_DEVICE: 3,
                DEVICES_DISAPPEARED: 4}

PLAYER_CHANGED = MessageType.PLAYER_CHANGED.value


def _err(code: ErrorCode, msg: str, **details) -> SyncopateError:
    return SyncopateError(code, msg, **details)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def _playlist_id(uri: str | None) -> str | None:
    if uri and uri.startswith("spotify:playlist:"):
        return uri[len("spotify:playlist:"):]
    return None


class _Txn:
    """The working copy one command (or tick) changes; `record()` is the difference."""
    __slots__ = ("active", "devs", "e", "fenced", "last_active", "now", "p", "play", "reason")

    def __init__(self, e: DeviceGroupEntity, now: int) -> None:
        self.e = e
        self.now = now
        self.p = dict(e.p)
        self.devs: dict[str, dict | None] = {}
        self.active = e.active
        self.last_active = e.last_active
        self.reason: str | None = None
        self.play: CountedPlay | None = None
        self.fenced = False

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
        rec = GroupChange(player={k: v for k, v in self.p.items() if not (old[k] is v or old[k] == v)},
                          devices=self.devs, play=self.play)
        if self.active != e.active:
            rec.active = self.active
        if self.last_active != e.last_active:
            rec.last_active = self.last_active
        if self.reason is not None:
            rec.revision = e.revision + 1
            if self.fenced or (self.active is not None and self.active != e.active):
                rec.fence = e.revision + 1          # a new active device: older revisions are fenced off
        return rec


class DeviceGroupEntity(Entity):
    kind = DEVICE_GROUP
    per_user = True
    tick_ms = TICK_MS

    def __init__(self, entity_id: str, env: Env) -> None:
        super().__init__(entity_id, env)
        cfg = env.config or {}
        self.heartbeat_timeout_ms = int(cfg.get("connect_heartbeat_timeout_ms", HEARTBEAT_TIMEOUT_MS))
        self.offline_grace_ms = int(cfg.get("connect_offline_grace_ms", OFFLINE_GRACE_MS))
        self.api_base = cfg.get("api_base_url", API_BASE)
        self._reset()

    def _reset(self) -> None:
        self.devices: dict[str, dict] = {}     # id -> {id,name,type,volume_percent,supports_volume,
        #                                         is_restricted,online,off_since,conn}
        self.active: str | None = None
        self.last_active: str | None = None    # the device that was active when it went offline
        self.p: dict = new_player()
        self.revision = 0                      # cluster revision: +1 per push
        self.fence = 0                         # revision of the last change of active device
        self.recent: list[list] = []           # [[played_at_ms, uri, context_uri], ...] oldest first
        self.streams: dict[str, int] = {}      # track uri -> streams
        self.counted_events: dict[str, None] = {}   # event ids that counted (window)
        self.counted_plays: dict[Any, None] = {}    # play keys that counted (window)
        self.play_floor = 0                    # every playback id <= this is treated as counted
        # soft state, never persisted: liveness is not durable (unknown after activation = now)
        self._seen: dict[str, int] = {}
        self._oc = OrderCache()
        self._meta: dict[str, dict] = {}

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
            self._window(self.counted_events, play.event_id)
            evicted = self._window(self.counted_plays, play.play_key)
            if isinstance(evicted, int) and not isinstance(evicted, bool) and evicted > self.play_floor:
                self.play_floor = evicted
            uri = play.track_uri
            self.streams[uri] = self.streams.get(uri, 0) + 1
            self.recent.append(play.recent())
            if len(self.recent) > RECENT_MAX:
                del self.recent[: len(self.recent) - RECENT_MAX]

    @staticmethod
    def _window(d: dict, key: Any) -> Any:
        d[key] = None
        if len(d) > COUNTED_WINDOW:
            old = next(iter(d))
            del d[old]
            return old
        return None

    def snapshot(self) -> dict:
        return GroupSnapshot(dict(self.devices), self.active, self.last_active, dict(self.p), self.revision,
                             self.fence, list(self.recent), dict(self.streams), list(self.counted_events),
                             list(self.counted_plays), self.play_floor).to_wire()

    def restore(self, data: dict) -> None:
        self._reset()
        snap = GroupSnapshot.from_wire(data)
        self.devices = snap.devices
        self.active = snap.active
        self.last_active = snap.last_active
        self.p = snap.player
        self.revision = snap.revision
        self.fence = snap.fence
        self.recent = snap.recent
        self.streams = snap.streams
        self.counted_events = dict.fromkeys(snap.counted_events)
        self.counted_plays = dict.fromkeys(snap.counted_plays)
        self.play_floor = snap.play_floor

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
            events.append(Event(PLAYER_CHANGED, cl))
            if reply_cluster:
                reply = dict(cl, heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
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
        cat = self.env.catalog
        if cat is None or not isinstance(uri, str):
            return None
        try:
            return cat.track_by_uri(uri)
        except SyncopateError:
            return None

    def _settle(self, t: _Txn) -> bool:
        end = ended_at(t.p)
        if end is None or t.now < end:
            return False
        return settle(t.p, self._oc.get(t.p), self._dur, t.now)

    def _view(self, now: int) -> dict:
        """The player as of `now` without committing (reads)."""
        p = self.p
        end = ended_at(p)
        if end is not None and now >= end:
            p = dict(p)
            settle(p, self._oc.get(p), self._dur, now)
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

    # == shapes =====================================================================================
    def _device_object(self, d: dict) -> dict:
        return {"id": d["id"], "is_active": d["id"] == self.active, "is_private_session": False,
                "is_restricted": d["is_restricted"], "name": d["name"], "type": d["type"],
                "volume_percent": d["volume_percent"], "supports_volume": d["supports_volume"],
                "is_online": d["online"]}

    def _track_meta(self, uri: str) -> dict:
        m = self._meta.get(uri)
        if m is not None:
            return m
        t = self._track(uri)
        if t is None:
            m = {"uri": uri, "id": None, "name": None, "duration_ms": 0, "artists": [], "album": None}
        else:
            obj = self.env.catalog.track_object(t)
            alb = obj.get("album") or {}
            m = {"uri": uri, "id": t.id, "name": t.name, "duration_ms": t.duration_ms,
                 "artists": [{"name": x.get("name"), "uri": x.get("uri")} for x in obj.get("artists", ())],
                 "album": {"name": alb.get("name"), "uri": alb.get("uri"), "images": alb.get("images", [])}}
        if len(self._meta) >= 64:
            self._meta.clear()
        self._meta[uri] = m
        return m

    def _track_object(self, uri: str) -> dict:
        t = self._track(uri)
        if t is None:
            return {"uri": uri, "type": "track", "name": None, "duration_ms": 0, "artists": [], "album": None}
        return self.env.catalog.track_object(t)

    def _context_object(self, ctx: str | None) -> dict | None:
        if ctx is None:
            return None
        kind, ident = ctx.split(":")[1], ctx.split(":")[-1]
        return {"type": kind, "uri": ctx, "href": f"{self.api_base}/{kind}s/{ident}",
                "external_urls": {"spotify": f"https://open.spotify.com/{kind}/{ident}"}}

    def cluster(self, reason: str | None, now: int) -> dict:
        """The whole device group as pushed to every device (docs/connect.md)."""
        p = self.p
        order = self._oc.get(p)
        active = self.active
        has_item = p["uri"] is not None
        return {
            "active_device_id": active,
            "devices": [self._device_object(d) for d in self.devices.values()],
            "player": {
                "track": self._track_meta(p["uri"]) if has_item else None,
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
            },
            "revision": self.revision,
            "reason": reason,
            "server_time_ms": now,
            "next_tracks": upcoming(p, order, 2, prefetch=True) if has_item else list(p["queue"][:2]),
        }

    def _playing_object(self, p: dict, now: int, *, full: bool) -> dict:
        order = self._oc.get(p)
        has_item = p["uri"] is not None
        dis = {}
        if not p["playing"]:
            dis["pausing"] = True
        if p["playing"] or not has_item:
            dis["resuming"] = True
        if not has_item:
            dis["seeking"] = True
        if not has_next(p, order):
            dis["skipping_next"] = True
        if not has_prev(p, order):
            dis["skipping_prev"] = True
        out: dict[str, Any] = {}
        if full:
            out["device"] = self._device_object(self.devices[self.active])
            out["repeat_state"] = p["repeat"]
            out["shuffle_state"] = p["shuffle"]
        out.update({
            "context": self._context_object(p["context_uri"]),
            "timestamp": p["timestamp_ms"],
            "progress_ms": extrapolate(p, now) if has_item else None,
            "is_playing": p["playing"],
            "item": self._track_object(p["uri"]) if has_item else None,
            "currently_playing_type": "track" if has_item else "unknown",
            "actions": {"disallows": dis},
        })
        return out

    # == device ops =================================================================================
    @op("register", role="user", args={"device_id": Str(required=True), "name": Str(),
                                       "type": Str(max_len=32), "volume_percent": Int(lo=0, hi=100),
                                       "supports_volume": Bool(), "is_restricted": Bool()})
    def _op_register(self, cmd: Command, a: Args) -> Outcome:
        did, name, dtype, vol = a["device_id"], a["name"], a["type"], a["volume_percent"]
        sv, restricted = a["supports_volume"], a["is_restricted"]
        t = _Txn(self, cmd.now_ms)
        old = t.dev(did)
        conn = ConnAddress.parse(cmd.origin) if cmd.origin is not None else None
        if old is None:
            if len(self.devices) >= MAX_DEVICES:
                raise _err(ErrorCode.LIMIT_EXCEEDED, f"at most {MAX_DEVICES} devices per user")
            d = {"id": did, "name": name or did, "type": dtype or "unknown",
                 "volume_percent": 100 if vol is None else vol,
                 "supports_volume": True if sv is None else sv,
                 "is_restricted": False if restricted is None else restricted,
                 "online": True, "off_since": None, "conn": conn}
            t.set_reason(NEW_DEVICE)
        else:
            d = dict(old)
            for k, v in (("name", name), ("type", dtype), ("volume_percent", vol),
                         ("supports_volume", sv), ("is_restricted", restricted)):
                if v is not None:
                    d[k] = v
            t.set_reason(NEW_DEVICE if not old["online"] else DEVICE_STATE_CHANGED)
            d.update(online=True, off_since=None, conn=conn)
        t.devs[did] = d
        self._settle(t)
        self._pick_up(t, did)
        out = self._commit(t, reply_cluster=True)
        self._seen[did] = cmd.now_ms
        return out

    @staticmethod
    def _pick_up(t: _Txn, did: str) -> None:
        """The device that was active when it dropped off comes back: it is the active device again
        (paused where it was), unless another device took over meanwhile."""
        if t.active is None and t.last_active == did and t.p["uri"] is not None:
            t.active = did
            t.fenced = True

    @op("heartbeat", role="user")
    def _op_heartbeat(self, cmd: Command, a: Args) -> Outcome:
        conns = a.get("conns")
        if conns is not None and cmd.principal.system:
            # the gateway vouches for every live connection of this user on it (one command)
            if not isinstance(conns, list):
                raise _err(ErrorCode.INVALID_FIELD, "conns must be a list of \"gateway/connection\"")
            live = {c for c in map(address, conns) if c is not None}
            seen = [did for did, d in self.devices.items() if d["online"] and d["conn"] in live]
            for did in seen:
                self._seen[did] = cmd.now_ms
            return Outcome(reply={"devices": seen, "revision": self.revision, "server_time_ms": cmd.now_ms})
        did = Str(required=True).parse(a, "device_id")
        d = self.devices.get(did)
        if d is None:
            raise _err(ErrorCode.NOT_FOUND, f"device not found: {did} (register again)")
        if d["online"]:
            self._seen[did] = cmd.now_ms
            return Outcome(reply={"revision": self.revision, "server_time_ms": cmd.now_ms})
        t = _Txn(self, cmd.now_ms)             # an offline device is heard from again: revive it
        e = t.edit(did)
        e.update(online=True, off_since=None)
        if cmd.origin is not None:
            e["conn"] = ConnAddress.parse(cmd.origin)
        t.set_reason(DEVICE_STATE_CHANGED)
        self._settle(t)
        self._pick_up(t, did)
        out = self._commit(t)
        self._seen[did] = cmd.now_ms
        out.reply = {"revision": self.revision, "server_time_ms": cmd.now_ms}
        return out

    @op("update_device", role="user", fenced=True,
        args={"device_id": Str(required=True), "volume_percent": Int(lo=0, hi=100), "name": Str()})
    def _op_update_device(self, cmd: Command, a: Args) -> Outcome:
        did, vol, name = a["device_id"], a["volume_percent"], a["name"]
        if vol is None and name is None:
            raise _err(ErrorCode.INVALID_FIELD, "nothing to update: give volume_percent or name")
        t = _Txn(self, cmd.now_ms)
        d = t.dev(did)
        if d is None:
            raise _err(ErrorCode.NOT_FOUND, f"device not found: {did}")
        if vol is not None and not d["supports_volume"]:
            raise _err(ErrorCode.VOLUME_CONTROL_DISALLOW, f"device {did} has no volume control")
        e = t.edit(did)
        if vol is not None:
            e["volume_percent"] = vol
        if name is not None:
            e["name"] = name
        t.set_reason(VOLUME_CHANGED if vol is not None and vol != d["volume_percent"] else DEVICE_STATE_CHANGED)
        self._settle(t)
        out = self._commit(t)
        if d["online"]:
            self._seen[did] = cmd.now_ms
        return out

    @op("disconnect", system=True)
    def _op_disconnect(self, cmd: Command, a: Args) -> Outcome:
        """Gateway notice: a websocket closed. {device_id?, conn?: "gateway/connection"} (or the
        command's origin). A notice about a connection the device no longer uses is ignored."""
        did = a.get("device_id")
        conn = address(a.get("conn", a.get("connection")))
        if conn is None and cmd.origin is not None:
            conn = ConnAddress.parse(cmd.origin)
        if did is not None:
            if not isinstance(did, str):
                raise _err(ErrorCode.INVALID_FIELD, "device_id must be a string")
            d = self.devices.get(did)
            if d is None or not d["online"]:
                return Outcome()
            if conn is not None and d["conn"] is not None and conn != d["conn"]:
                return Outcome()            # the device already reconnected on another connection
            targets = [did]
        else:
            if conn is None:
                raise _err(ErrorCode.INVALID_FIELD, "device_id or the connection is required")
            targets = [i for i, d in self.devices.items() if d["online"] and d["conn"] == conn]
            if not targets:
                return Outcome()
        t = _Txn(self, cmd.now_ms)
        self._settle(t)
        for i in targets:
            self._go_offline(t, i)
        t.set_reason(DEVICE_STATE_CHANGED)
        return self._commit(t)

    @op("progress", role="user", args={"event_id": Str(required=True), "device_id": Str(required=True),
                                       "uri": Uri("track", required=True), "ms_played": Int(lo=0, required=True),
                                       "playback_id": Int(lo=1)})
    def _op_progress(self, cmd: Command, a: Args) -> Outcome:
        eid, did, uri, ms, pb = a["event_id"], a["device_id"], a["uri"], a["ms_played"], a["playback_id"]
        require(self.env.catalog, uri)
        if did not in self.devices:
            raise _err(ErrorCode.NOT_FOUND, f"device not found: {did}")
        if pb is not None and pb > self.p["playback_id"]:
            raise _err(ErrorCode.BAD_REQUEST, f"unknown playback_id {pb}")
        if self.devices[did]["online"]:
            self._seen[did] = cmd.now_ms
        p = self.p
        if pb is not None:
            key: Any = pb
        elif did == self.active and uri == p["uri"] and p["playback_id"]:
            key = p["playback_id"]                      # a report on the current play: its playback id
        else:
            key = "e:" + eid
        if eid in self.counted_events:
            return Outcome(reply={"counted": False, "duplicate": True, "stream_count": self.streams.get(uri, 0)})
        if key in self.counted_plays or (isinstance(key, int) and key <= self.play_floor):
            return Outcome(reply={"counted": False, "duplicate": True, "stream_count": self.streams.get(uri, 0)})
        if ms < STREAM_THRESHOLD_MS:
            return Outcome(reply={"counted": False, "duplicate": False, "stream_count": self.streams.get(uri, 0)})
        ctx = p["context_uri"] if key == p["playback_id"] else None
        cu = a.get("context_uri")
        if ctx is None and isinstance(cu, str):
            try:
                if parse_uri(cu)[0] in ("playlist", "album", "artist", "show"):
                    ctx = cu
            except SyncopateError:
                pass
        t = _Txn(self, cmd.now_ms)
        t.play = CountedPlay(eid, key, uri, cmd.now_ms, ctx)
        out = self._commit(t)
        out.reply = {"counted": True, "duplicate": False, "stream_count": self.streams[uri]}
        return out

    # == player ops =================================================================================
    @op("transfer", role="user", control=True, fenced=True, args={"play": Bool()})
    def _op_transfer(self, cmd: Command, a: Args) -> Outcome:
        ids = a.get("device_ids")
        if not isinstance(ids, list) or len(ids) != 1 or not isinstance(ids[0], str):
            raise _err(ErrorCode.BAD_REQUEST, "device_ids must hold exactly one device id")
        play = a["play"]
        did = ids[0]
        t = _Txn(self, cmd.now_ms)
        d = t.dev(did)
        if d is None:
            raise _err(ErrorCode.NOT_FOUND, f"device not found: {did}")
        if not d["online"]:
            raise _err(ErrorCode.BAD_REQUEST, f"device {did} is offline", device_id=did)
        self._controllable(t, cmd, did)
        self._settle(t)
        p = t.p
        if p["uri"] is not None:
            p["position_ms"] = extrapolate(p, t.now)      # the new device starts where the old one is
            p["timestamp_ms"] = t.now
            if play:
                p["playing"] = True
        self._activate(t, did)
        t.fenced = True
        t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t)

    @op("play", role="user", control=True, fenced=True, args={"position_ms": Int(lo=0)})
    def _op_play(self, cmd: Command, a: Args) -> Outcome:
        pos_ms = a["position_ms"]
        offset = a.get("offset")
        new_items = a.get("context_uri") is not None or a.get("uris") is not None
        if new_items:
            ctx, tracks = self._play_items(a)
            start = self._offset(offset, tracks)
        elif offset is not None:
            raise _err(ErrorCode.BAD_REQUEST, "offset needs context_uri or uris")
        t = _Txn(self, cmd.now_ms)
        target = self._target(t, cmd, fallback=True)
        self._controllable(t, cmd, target)
        self._settle(t)
        p = t.p
        order = None
        if new_items:
            load_context(p, ctx, tracks, start, 0, t.now, self._dur, self._seed(cmd))
            if self._track(p["uri"]) is None:
                raise _err(ErrorCode.UNKNOWN_URI, f"no such track: {p['uri']}")
            p["playing"] = True
            if pos_ms:
                if pos_ms >= p["duration_ms"]:
                    skip_or_end(p, self._oc.get(p), self._dur, t.now)
                else:
                    p["position_ms"] = pos_ms
        else:
            if p["uri"] is None:
                raise _err(ErrorCode.NO_SPECIFIC_TRACK, "nothing to resume: give context_uri or uris")
            if p["playing"] and target == t.active and pos_ms is None:
                raise _err(ErrorCode.NOT_PAUSED, "already playing")
            p["position_ms"] = extrapolate(p, t.now)
            p["timestamp_ms"] = t.now
            p["playing"] = True
            if pos_ms is not None:
                if pos_ms >= p["duration_ms"]:
                    order = self._oc.get(p)
                    skip_or_end(p, order, self._dur, t.now)
                else:
                    p["position_ms"] = pos_ms
        self._activate(t, target)
        t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t, seen_snapshot=a.get("context_snapshot_id"))

    def _play_items(self, a: dict) -> tuple[str | None, list]:
        ctx, uris = a.get("context_uri"), a.get("uris")
        if ctx is not None and uris is not None:
            raise _err(ErrorCode.BAD_REQUEST, "give context_uri or uris, not both")
        if ctx is not None:
            kind, ident = parse_uri(ctx)
            if kind == "playlist":
                tracks = self._entries(a.get("context_entries"), "context_entries")
            elif kind == "album":
                cat = self.env.catalog
                found = cat.album_tracks(ident) if cat is not None else []
                if not found:
                    raise _err(ErrorCode.UNKNOWN_URI, f"no such album: {ctx}")
                tracks = [[str(i), tr.uri] for i, tr in enumerate(found)]
            elif kind == "track":
                raise _err(ErrorCode.INVALID_URI, "context_uri must be an album or playlist; use uris for tracks")
            else:
                raise _err(ErrorCode.CONTEXT_DISALLOW, f"{kind} contexts are not supported")
            if not tracks:
                raise _err(ErrorCode.BAD_REQUEST, f"{ctx} has no tracks")
            return ctx, tracks
        if not isinstance(uris, list) or not uris:
            raise _err(ErrorCode.BAD_REQUEST, "uris must be a non-empty list of track uris")
        if len(uris) > MAX_CONTEXT:
            raise _err(ErrorCode.BAD_REQUEST, f"at most {MAX_CONTEXT} uris")
        for u in uris:
            require(self.env.catalog, u)
        return None, [[str(i), u] for i, u in enumerate(uris)]

    @staticmethod
    def _entries(entries: Any, name: str) -> list:
        if not isinstance(entries, list):
            raise _err(ErrorCode.INVALID_FIELD, f"{name} (the playlist's [[entry_id, uri], ...]) is required")
        if len(entries) > MAX_CONTEXT:
            raise _err(ErrorCode.BAD_REQUEST, f"at most {MAX_CONTEXT} entries")
        out = []
        for e in entries:
            if not isinstance(e, (list, tuple)) or len(e) != 2 or not isinstance(e[1], str) \
                    or not isinstance(e[0], (str, int)) or isinstance(e[0], bool):
                raise _err(ErrorCode.INVALID_FIELD, f"{name} items must be [entry_id, uri]")
            out.append([e[0], e[1]])
        return out

    @staticmethod
    def _offset(offset: Any, tracks: list) -> int | None:
        if offset is None:
            return None
        if not isinstance(offset, dict):
            raise _err(ErrorCode.INVALID_FIELD, "offset must be {position} or {uri}")
        if "position" in offset:
            pos = int_arg(offset, "position", required=True, lo=0)
            if pos >= len(tracks):
                raise _err(ErrorCode.BAD_REQUEST, f"offset.position {pos} is past the end of the context")
            return pos
        if "uri" in offset:
            u = offset["uri"]
            if not isinstance(u, str):
                raise _err(ErrorCode.INVALID_URI, "offset.uri must be a track uri")
            parse_uri(u, "track")
            for i, e in enumerate(tracks):
                if e[1] == u:
                    return i
            raise _err(ErrorCode.BAD_REQUEST, f"offset.uri {u} is not in the context")
        raise _err(ErrorCode.INVALID_FIELD, "offset must be {position} or {uri}")

    @op("pause", role="user", control=True, fenced=True)
    def _op_pause(self, cmd: Command, a: Args) -> Outcome:
        t = _Txn(self, cmd.now_ms)
        self._active_target(t, cmd)
        self._settle(t)
        p = t.p
        if not p["playing"]:
            raise _err(ErrorCode.ALREADY_PAUSED, "already paused")
        p["position_ms"] = extrapolate(p, t.now)
        p["timestamp_ms"] = t.now
        p["playing"] = False
        t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t)

    @op("next", role="user", control=True, fenced=True)
    @op("previous", role="user", control=True, fenced=True)
    def _op_skip(self, cmd: Command, a: Args) -> Outcome:
        t = _Txn(self, cmd.now_ms)
        self._active_target(t, cmd)
        self._settle(t)
        order = self._oc.get(t.p)
        if cmd.op == "next":
            if not skip_next(t.p, order, self._dur, t.now, auto=False):
                raise _err(ErrorCode.NO_NEXT_TRACK, "no next track")
        elif not skip_prev(t.p, order, self._dur, t.now):
            raise _err(ErrorCode.NO_PREV_TRACK, "no previous track")
        t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t)

    @op("seek", role="user", control=True, fenced=True, args={"position_ms": Int(lo=0, required=True)})
    def _op_seek(self, cmd: Command, a: Args) -> Outcome:
        pos_ms = a["position_ms"]
        t = _Txn(self, cmd.now_ms)
        self._active_target(t, cmd)
        self._settle(t)
        p = t.p
        if p["uri"] is None:
            raise _err(ErrorCode.NO_SPECIFIC_TRACK, "nothing is playing")
        if pos_ms >= p["duration_ms"]:
            skip_or_end(p, self._oc.get(p), self._dur, t.now)     # past the end: the next track
        else:
            p["position_ms"] = pos_ms
            p["timestamp_ms"] = t.now
        t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t)

    @op("repeat", role="user", control=True, fenced=True, args={"state": Choice(REPEAT_STATES, required=True)})
    def _op_repeat(self, cmd: Command, a: Args) -> Outcome:
        state = a["state"]
        t = _Txn(self, cmd.now_ms)
        self._active_target(t, cmd)
        self._settle(t)
        t.p["repeat"] = state
        t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t)

    @op("shuffle", role="user", control=True, fenced=True, args={"state": Bool(required=True)})
    def _op_shuffle(self, cmd: Command, a: Args) -> Outcome:
        state = a["state"]
        t = _Txn(self, cmd.now_ms)
        self._active_target(t, cmd)
        self._settle(t)
        if state != t.p["shuffle"]:
            set_shuffle(t.p, self._oc.get(t.p), state, self._seed(cmd))
        t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t)

    @op("volume", role="user", control=True, fenced=True,
        args={"volume_percent": Int(lo=0, hi=100, required=True)})
    def _op_volume(self, cmd: Command, a: Args) -> Outcome:
        vol = a["volume_percent"]
        t = _Txn(self, cmd.now_ms)
        did = self._target(t, cmd)
        if not t.dev(did)["supports_volume"]:
            raise _err(ErrorCode.VOLUME_CONTROL_DISALLOW, f"device {did} has no volume control")
        self._controllable(t, cmd, did)
        self._settle(t)
        t.edit(did)["volume_percent"] = vol
        t.set_reason(VOLUME_CHANGED)
        return self._commit(t)

    @op("queue_add", role="user", control=True, fenced=True, args={"uri": Uri("track", required=True)})
    def _op_queue_add(self, cmd: Command, a: Args) -> Outcome:
        uri = a["uri"]
        require(self.env.catalog, uri)
        t = _Txn(self, cmd.now_ms)
        self._active_target(t, cmd)
        self._settle(t)
        if len(t.p["queue"]) >= MAX_QUEUE:
            raise _err(ErrorCode.LIMIT_EXCEEDED, f"the queue holds at most {MAX_QUEUE} tracks")
        t.p["queue"] = t.p["queue"] + [uri]
        t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t)

    @op("context_changed", system=True)
    def _op_context_changed(self, cmd: Command, a: Args) -> Outcome:
        ctx = a.get("context_uri")
        if not isinstance(ctx, str):
            raise _err(ErrorCode.INVALID_FIELD, "context_uri is required")
        tracks = self._entries(a.get("entries"), "entries")
        if ctx != self.p["context_uri"]:           # no longer playing it: stop listening
            pl = _playlist_id(ctx)
            eff = [Command(PLAYLIST, pl, "remove_listener", {"user_id": self.id}, SYSTEM)] if pl else []
            return Outcome(effects=eff)
        if tracks == self.p["tracks"]:
            return Outcome()
        t = _Txn(self, cmd.now_ms)
        self._settle(t)
        change_context(t.p, self._oc.get(t.p), tracks)
        t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t)

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
        return Outcome(reply=self._playing_object(self._view(cmd.now_ms), cmd.now_ms, full=True))

    @op("currently_playing", role="user")
    def _op_currently_playing(self, cmd: Command, a: Args) -> Outcome:
        p = self._view(cmd.now_ms)
        if self.active is None or p["uri"] is None:
            return Outcome(reply=None)
        return Outcome(reply=self._playing_object(p, cmd.now_ms, full=False))

    @op("devices", role="user")
    def _op_devices(self, cmd: Command, a: Args) -> Outcome:
        return Outcome(reply={"devices": [self._device_object(d) for d in self.devices.values() if d["online"]]})

    @op("queue", role="user")
    def _op_queue(self, cmd: Command, a: Args) -> Outcome:
        p = self._view(cmd.now_ms)
        order = self._oc.get(p)
        return Outcome(reply={
            "currently_playing": self._track_object(p["uri"]) if p["uri"] is not None else None,
            "queue": [self._track_object(u) for u in upcoming(p, order, 20, prefetch=False)],
        })

    @op("recently_played", role="user", args={"limit": Int(lo=1, hi=50, default=20), "before": Int(lo=0),
                                              "after": Int(lo=0)})
    def _op_recently_played(self, cmd: Command, a: Args) -> Outcome:
        limit, before, after = a["limit"], a["before"], a["after"]
        if before is not None and after is not None:
            raise _err(ErrorCode.BAD_REQUEST, "give before or after, not both")
        rows = self.recent                                    # oldest first
        if after is not None:
            sel = [r for r in rows if r[0] > after][:limit]   # the ones right after the cursor
            more = len([r for r in rows if r[0] > after]) > limit
            sel.reverse()
        else:
            cand = [r for r in rows if before is None or r[0] < before]
            sel = cand[-limit:][::-1]                         # newest first
            more = len(cand) > limit
        items = [{"track": self._track_object(r[1]), "played_at": _iso(r[0]),
                  "context": self._context_object(r[2])} for r in sel]
        cursors = {"after": str(sel[0][0]), "before": str(sel[-1][0])} if sel else None
        nxt = None
        if sel and more:
            nxt = (f"{self.api_base}/me/player/recently-played?after={sel[0][0]}&limit={limit}" if after is not None
                   else f"{self.api_base}/me/player/recently-played?before={sel[-1][0]}&limit={limit}")
        return Outcome(reply={"href": None, "items": items, "limit": limit, "next": nxt, "cursors": cursors,
                              "total": len(rows)})

    @op("stream_counts", role="user")
    def _op_stream_counts(self, cmd: Command, a: Args) -> Outcome:
        uris = a.get("uris")
        if uris is None:
            counts = dict(self.streams)
        else:
            if not isinstance(uris, list) or len(uris) > 1000:
                raise _err(ErrorCode.INVALID_FIELD, "uris must be a list of at most 1000 track uris")
            for u in uris:
                if not isinstance(u, str):
                    raise _err(ErrorCode.INVALID_URI, "uris must be track uris")
                parse_uri(u, "track")
            counts = {u: self.streams.get(u, 0) for u in uris}
        return Outcome(reply={"user_id": self.id, "counts": counts, "total": sum(self.streams.values())})

