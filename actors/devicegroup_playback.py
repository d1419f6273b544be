"""The device group's playback commands: transfer, play, pause, next / previous, seek, repeat,
shuffle, volume, the user queue, and the playing playlist's changes (docs/connect.md "Ops"). A mixin
of DeviceGroupEntity (actors/devicegroup.py); the state machine itself is actors/player_state.py."""
from __future__ import annotations

from typing import Any

from actors.args import Args, Bool, Choice, Int, Uri, int_arg
from actors.asks import Ask
from actors.devicegroup_market import market_ask
from actors.devicegroup_txn import (
    MAX_CONTEXT,
    MAX_QUEUE,
    PLAYER_STATE_CHANGED,
    VOLUME_CHANGED,
    _err,
    _playlist_id,
    _Txn,
)
from actors.entity import SYSTEM, Command, Outcome, op
from actors.player_state import (
    REPEAT_STATES,
    change_context,
    continue_autoplay,
    extrapolate,
    load_context,
    set_shuffle,
    skip_next,
    skip_or_end,
    skip_prev,
)
from catalog import require
from protocols.errors import ErrorCode
from protocols.messages import PLAYLIST
from protocols.uris import parse_uri


def play_context_ask(entity: Any, cmd: Command) -> Ask | None:
    """`play` of a playlist context reads the playlist's entries from the playlist entity, as the
    commanding user (actors/asks.py): a playlist hidden from the user is NOT_FOUND, as any read of it."""
    ctx = cmd.args.get("context_uri")
    if not isinstance(ctx, str) or not ctx.startswith("spotify:playlist:"):
        return None
    _, pid = parse_uri(ctx, "playlist")
    return Ask(Command(PLAYLIST, pid, "entries", {}, cmd.principal), f"playlist {pid}", "playlist")


class PlaybackOps:
    @op("transfer", role="user", control=True, fenced=True, args={"play": Bool()}, ask=market_ask)
    def _op_transfer(self, cmd: Command, a: Args) -> Outcome:
        ids = a.get("device_ids")
        if not isinstance(ids, list) or len(ids) != 1 or not isinstance(ids[0], str):
            raise _err(ErrorCode.BAD_REQUEST, "device_ids must hold exactly one device id")
        play = a["play"]
        did = ids[0]
        t = self._txn(cmd)
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

    @op("play", role="user", control=True, fenced=True, args={"position_ms": Int(lo=0)},
        ask=(market_ask, play_context_ask))
    def _op_play(self, cmd: Command, a: Args) -> Outcome:
        pos_ms = a["position_ms"]
        offset = a.get("offset")
        asked = (cmd.asked or {}).get("playlist") or {}     # the playlist's answer (play_context_ask)
        new_items = a.get("context_uri") is not None or a.get("uris") is not None
        if new_items:
            ctx, tracks = self._play_items(a, asked)
            start = self._offset(offset, tracks)
        elif offset is not None:
            raise _err(ErrorCode.BAD_REQUEST, "offset needs context_uri or uris")
        t = self._txn(cmd)
        target = self._target(t, cmd, fallback=True)
        self._controllable(t, cmd, target)
        self._settle(t)
        p = t.p
        order = None
        ok = self._ok(p)
        if new_items:
            p["autoplaying"], p["autoplay_from"] = False, None       # the listener chose what plays
            if not load_context(p, ctx, tracks, start, 0, t.now, self._dur, self._seed(cmd), ok):
                # the track asked for (offset), or every track of the context, may not play here
                self._refuse_unavailable(p, tracks[start][1] if start is not None else tracks[0][1])
                raise _err(ErrorCode.TRACK_UNAVAILABLE, "no track of the context is available")
            if self._track(p["uri"]) is None:
                raise _err(ErrorCode.UNKNOWN_URI, f"no such track: {p['uri']}")
            p["playing"] = True
            if pos_ms:
                if pos_ms >= p["duration_ms"]:
                    skip_or_end(p, self._oc.get(p), self._dur, t.now, ok)
                else:
                    p["position_ms"] = pos_ms
        else:
            if p["uri"] is None:
                raise _err(ErrorCode.NO_SPECIFIC_TRACK, "nothing to resume: give context_uri or uris")
            if p["playing"] and target == t.active and pos_ms is None:
                raise _err(ErrorCode.NOT_PAUSED, "already playing")
            self._refuse_unavailable(p, p["uri"])       # taken down (or market changed) while paused
            p["position_ms"] = extrapolate(p, t.now)
            p["timestamp_ms"] = t.now
            p["playing"] = True
            if pos_ms is not None:
                if pos_ms >= p["duration_ms"]:
                    order = self._oc.get(p)
                    skip_or_end(p, order, self._dur, t.now, ok)
                else:
                    p["position_ms"] = pos_ms
        self._activate(t, target)
        t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t, seen_snapshot=asked.get("snapshot_id"))

    def _play_items(self, a: dict, asked: dict) -> tuple[str | None, list]:
        ctx, uris = a.get("context_uri"), a.get("uris")
        if ctx is not None and uris is not None:
            raise _err(ErrorCode.BAD_REQUEST, "give context_uri or uris, not both")
        if ctx is not None:
            kind, ident = parse_uri(ctx)
            if kind == "playlist":
                tracks = self._entries(asked.get("entries"), "the asked playlist entries")
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

    @op("next", role="user", control=True, fenced=True, ask=market_ask)
    @op("previous", role="user", control=True, fenced=True, ask=market_ask)
    def _op_skip(self, cmd: Command, a: Args) -> Outcome:
        t = self._txn(cmd)
        self._active_target(t, cmd)
        self._settle(t)
        order = self._oc.get(t.p)
        ok = self._ok(t.p)
        if cmd.op == "next":
            if not skip_next(t.p, order, self._dur, t.now, auto=False, ok=ok) \
                    and not continue_autoplay(t.p, self._dur, t.now, ok, self._related):
                raise _err(ErrorCode.NO_NEXT_TRACK, "no next track")
        elif not skip_prev(t.p, order, self._dur, t.now, ok):
            raise _err(ErrorCode.NO_PREV_TRACK, "no previous track")
        t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t)

    @op("seek", role="user", control=True, fenced=True, args={"position_ms": Int(lo=0, required=True)},
        ask=market_ask)
    def _op_seek(self, cmd: Command, a: Args) -> Outcome:
        pos_ms = a["position_ms"]
        t = self._txn(cmd)
        self._active_target(t, cmd)
        self._settle(t)
        p = t.p
        if p["uri"] is None:
            raise _err(ErrorCode.NO_SPECIFIC_TRACK, "nothing is playing")
        if pos_ms >= p["duration_ms"]:
            skip_or_end(p, self._oc.get(p), self._dur, t.now, self._ok(p))     # past the end: the next track
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

    @op("queue_add", role="user", control=True, fenced=True, args={"uri": Uri("track", required=True)},
        ask=market_ask)
    def _op_queue_add(self, cmd: Command, a: Args) -> Outcome:
        uri = a["uri"]
        require(self.env.catalog, uri)
        t = self._txn(cmd)
        self._active_target(t, cmd)
        self._refuse_unavailable(t.p, uri)
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
