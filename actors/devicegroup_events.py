"""The device group's listening-event ops: offline batch upload (`upload_events`) and the private
session setting (`private_session`). A mixin of DeviceGroupEntity (actors/devicegroup.py);
docs/events.md has the rules, protocols/listening.py the tolerances and reason codes.

An upload is judged event by event, in order, each against the plays already recorded and the
events of the same batch accepted before it (actors/devicegroup_plays.py): every event gets its own
answer (accepted / duplicate / refused with a stable reason), and one bad event never refuses the
batch. The accepted events become ONE record (`GroupChange.events`) and ONE effect to the event
pipeline (kind EVENTBUS, carried by the host's durable outbox: sent after the commit and re-sent
until the pipeline acknowledges it, syncopate/events/publish.py).

How a record is applied (`_apply_event`, shared by handle and replay): a new play is added to the
index; an event of a recorded play extends it; when the play becomes a stream by this event the
track's stream count goes up and, outside a private session, the play joins recently played.
Live reports (`progress`) carry their own CountedPlay for that (source "live"), so their event
only indexes the play.
"""
from __future__ import annotations

import bisect

from actors.args import Args, Bool
from actors.devicegroup_plays import MAX_CONCURRENT_PLAYS, Play
from actors.devicegroup_records import GroupChange
from actors.devicegroup_txn import PLAYER_STATE_CHANGED, RECENT_MAX, _err, _Txn
from actors.entity import SYSTEM, Command, Outcome, op
from protocols.errors import ErrorCode
from protocols.listening import (
    ACCEPTED,
    DUPLICATE,
    FUTURE_SKEW_MS,
    MAX_AGE_MS,
    MAX_BATCH,
    MAX_PLAYS_KEPT,
    MS_PLAYED_TOLERANCE_MS,
    R_CONCURRENT,
    R_EVENT_ID_REUSED,
    R_FUTURE,
    R_INVALID,
    R_MS_PLAYED,
    R_OVERLAP,
    R_PLAY_LIMIT,
    R_TOO_OLD,
    R_UNKNOWN_TRACK,
    REFUSED,
    STREAM_THRESHOLD_MS,
    ListeningEvent,
    Malformed,
    parse_event,
)

EVENTBUS = "eventbus"          # the effect target: the event pipeline, not an entity
PUBLISH = "publish"


def publish_effect(user_id: str, events: list[ListeningEvent]) -> Command:
    return Command(EVENTBUS, user_id, PUBLISH, {"events": [e.to_wire() for e in events]}, SYSTEM)


def play_id_for(user_id: str, event_id: str, start: int) -> str:
    return f"{user_id}/{start}/{event_id}"


class EventOps:
    @op("upload_events", role="user")
    def _op_upload_events(self, cmd: Command, a: Args) -> Outcome:
        raw = cmd.args.get("events")
        if not isinstance(raw, list) or not raw:
            raise _err(ErrorCode.INVALID_FIELD, "events must be a non-empty list")
        if len(raw) > MAX_BATCH:
            raise _err(ErrorCode.LIMIT_EXCEEDED, f"at most {MAX_BATCH} events per upload, got {len(raw)}")
        now = cmd.now_ms
        product = cmd.principal.product
        results, accepted = [], []
        for r in raw:
            res, ev = self._judge(r, now, product)
            results.append(res)
            if ev is not None:
                # Applied at once, so the batch's later events are judged against it; the record
                # below carries the same events, and replay applies them in the same order.
                self._apply_event(ev)
                accepted.append(ev)
        counts = {s: sum(1 for r in results if r["status"] == s) for s in (ACCEPTED, DUPLICATE, REFUSED)}
        reply = {"results": results, **counts}
        if not accepted:
            return Outcome(reply=reply)
        rec = GroupChange(events=[e.to_wire() for e in accepted])
        return Outcome(reply=reply, records=[rec.to_wire()], effects=[publish_effect(self.id, accepted)])

    def _judge(self, raw, now: int, product: str) -> tuple[dict, ListeningEvent | None]:
        eid = raw.get("event_id") if isinstance(raw, dict) else None
        out: dict = {"event_id": eid if isinstance(eid, str) else None}

        def refuse(reason: str, message: str) -> tuple[dict, None]:
            out.update(status=REFUSED, reason=reason, message=message)
            return out, None

        try:
            s = parse_event(raw)
        except Malformed as exc:
            return refuse(R_INVALID, str(exc))
        track = self._track(s.track_uri)
        if track is None:
            return refuse(R_UNKNOWN_TRACK, f"not in the catalog: {s.track_uri}")
        if s.played_at_ms > now + FUTURE_SKEW_MS:
            return refuse(R_FUTURE, f"played_at_ms is {s.played_at_ms - now} ms ahead of the server clock "
                                    f"(tolerance {FUTURE_SKEW_MS} ms)")
        if s.played_at_ms < now - MAX_AGE_MS:
            return refuse(R_TOO_OLD, f"played more than {MAX_AGE_MS // 86_400_000} days ago")
        if s.ms_played > track.duration_ms + MS_PLAYED_TOLERANCE_MS:
            return refuse(R_MS_PLAYED, f"ms_played {s.ms_played} exceeds the track's duration "
                                       f"{track.duration_ms} + {MS_PLAYED_TOLERANCE_MS} ms")
        ix = self.plays
        start, end = s.played_at_ms, s.played_at_ms + s.ms_played
        stream = s.ms_played >= STREAM_THRESHOLD_MS
        m = ix.match(s.track_uri, start)
        prev = ix.play_of_event(s.event_id)
        if prev is not None and (m is None or m.play_id != prev):
            return refuse(R_EVENT_ID_REUSED, f"event id {s.event_id} was used for another play")
        if m is not None and (prev is not None or m.stream or not stream):
            out.update(status=DUPLICATE, play_id=m.play_id)     # nothing new about a recorded play
            return out, None
        exclude = m.play_id if m is not None else None
        clash = ix.overlapping(start, end, s.device_id, exclude)
        if clash:
            return refuse(R_OVERLAP, f"device {s.device_id} was playing {clash[0].track_uri} then")
        if len(ix.overlapping(start, end, None, exclude)) >= MAX_CONCURRENT_PLAYS:
            return refuse(R_CONCURRENT, f"more than {MAX_CONCURRENT_PLAYS} plays at once on this account")
        if m is None and len(ix) >= MAX_PLAYS_KEPT:
            return refuse(R_PLAY_LIMIT, f"{MAX_PLAYS_KEPT} plays in {MAX_AGE_MS // 86_400_000} days")
        play_id = m.play_id if m is not None else play_id_for(self.id, s.event_id, start)
        ev = ListeningEvent(self.id, s.event_id, play_id, s.device_id, s.track_uri, s.context_uri, start,
                            s.ms_played, now, product, s.market or self.p["market"],   # else the group's (docs/rights.md)
                            s.private or self.p["private_session"], stream,
                            "upload", m.start if m is not None else start)
        out.update(status=ACCEPTED, play_id=play_id, stream=stream)
        return out, ev

    def _apply_event(self, ev: ListeningEvent) -> None:
        ix = self.plays
        p = ix.get(ev.play_id, ev.play_start_ms)
        if p is None:
            ix.add(Play(ev.play_id, ev.track_uri, ev.device_id, ev.played_at_ms, ev.ms_played, ev.stream,
                        ev.private), [ev.event_id])
            became_stream = ev.stream
        else:
            ix.extend(ev.play_id, ev.event_id, ev.ms_played, ev.stream, ev.play_start_ms)
            became_stream = ev.stream and not p.stream
        if became_stream and ev.source != "live":        # a live report counts through its CountedPlay
            uri = ev.track_uri
            self.streams[uri] = self.streams.get(uri, 0) + 1
            if not ev.private:
                bisect.insort(self.recent, [ev.played_at_ms + ev.ms_played, uri, ev.context_uri])
                if len(self.recent) > RECENT_MAX:
                    del self.recent[: len(self.recent) - RECENT_MAX]
        ix.prune(ev.received_ms)

    @op("private_session", role="user", args={"enabled": Bool(required=True)})
    def _op_private_session(self, cmd: Command, a: Args) -> Outcome:
        """Spotify's private session, for the whole device group: while on, plays are counted for
        royalties but kept out of recently played and recommendations (the events say `private`)."""
        t = _Txn(self, cmd.now_ms)
        t.p["private_session"] = a["enabled"]
        if t.p["private_session"] != self.p["private_session"]:
            t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t, {"private_session": a["enabled"]})
