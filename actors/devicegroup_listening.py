"""The device group's live listening reports: progress reports that count as streams (exactly once),
recently played, stream counts (docs/connect.md "Listening events and stream counts"). A mixin of
DeviceGroupEntity (actors/devicegroup.py). A report that counts is also a listening event of the
pipeline (source "live", its play starting ms_played before the report; docs/events.md), and a
report of a play already uploaded (same track, start within the match window) is a duplicate."""
from __future__ import annotations

from typing import Any

from actors.args import Args, Int, Str, Uri
from actors.devicegroup_events import play_id_for, publish_effect
from actors.devicegroup_records import CountedPlay
from actors.devicegroup_txn import (
    STREAM_THRESHOLD_MS,
    _err,
    _Txn,
)
from actors.entity import Command, Outcome, op
from catalog import require
from protocols.errors import ErrorCode, SyncopateError
from protocols.listening import MS_PLAYED_TOLERANCE_MS, R_MS_PLAYED, ListeningEvent
from protocols.uris import parse_uri


class ListeningOps:
    @op("progress", role="user", args={"event_id": Str(required=True), "device_id": Str(required=True),
                                       "uri": Uri("track", required=True), "ms_played": Int(lo=0, required=True),
                                       "playback_id": Int(lo=1)})
    def _op_progress(self, cmd: Command, a: Args) -> Outcome:
        eid, did, uri, ms, pb = a["event_id"], a["device_id"], a["uri"], a["ms_played"], a["playback_id"]
        track = require(self.env.catalog, uri)
        if track is not None and ms > track.duration_ms + MS_PLAYED_TOLERANCE_MS:
            raise _err(ErrorCode.BAD_REQUEST, f"ms_played {ms} exceeds the track's duration {track.duration_ms} "
                                              f"+ {MS_PLAYED_TOLERANCE_MS} ms", reason=R_MS_PLAYED)
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
        # The same play uploaded (or reported under another key) before: one play, one stream.
        start = cmd.now_ms - ms
        m = self.plays.match(uri, start)
        if m is not None and m.stream:
            return Outcome(reply={"counted": False, "duplicate": True, "stream_count": self.streams.get(uri, 0)})
        ctx = p["context_uri"] if key == p["playback_id"] else None
        cu = a.get("context_uri")
        if ctx is None and isinstance(cu, str):
            try:
                if parse_uri(cu)[0] in ("playlist", "album", "artist", "show"):
                    ctx = cu
            except SyncopateError:
                pass
        private = bool(p["private_session"])
        t = _Txn(self, cmd.now_ms)
        t.play = CountedPlay(eid, key, uri, cmd.now_ms, ctx, private)
        ev = ListeningEvent(self.id, eid, m.play_id if m is not None else play_id_for(self.id, eid, start), did,
                            uri, ctx, start, ms, cmd.now_ms, cmd.principal.product, None, private, True, "live",
                            m.start if m is not None else start)
        t.events = [ev.to_wire()]
        out = self._commit(t)
        out.effects.append(publish_effect(self.id, [ev]))
        out.reply = {"counted": True, "duplicate": False, "stream_count": self.streams[uri]}
        return out


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
        plays = [{"uri": r[1], "played_at_ms": r[0], "context_uri": r[2]} for r in sel]
        return Outcome(reply={"plays": plays, "limit": limit, "more": bool(sel) and more,
                              "direction": "after" if after is not None else "before", "total": len(rows)})

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


