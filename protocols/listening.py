"""Listening events: what a client uploads, what a play is, the tolerances, and the refusal reasons
(docs/events.md). Pure values: the device group validates with them (actors/devicegroup_events.py),
the pipeline carries and counts them (syncopate/events/).

A *play* is one listening of one track by one user: events of the same user and the same track
whose start times (`played_at_ms`, the client's clock when playback of the track began) are within
PLAY_MATCH_MS of each other are the same play, whatever their event ids and whichever device sent
them. A play is a *stream* once one of its events shows ms_played >= STREAM_THRESHOLD_MS; it is
counted once (its play id, the user and its first event's id, is the pipeline's exactly-once key).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

STREAM_THRESHOLD_MS = 30_000            # a play is a stream once it has played this long
PLAY_MATCH_MS = 5_000                   # same user + track, starts this close: the same play
MS_PLAYED_TOLERANCE_MS = 2_000          # ms_played may exceed the track's duration by this much
OVERLAP_TOLERANCE_MS = 2_000            # one device's plays may overlap by this much (crossfade, gaps)
FUTURE_SKEW_MS = 120_000                # a client clock may be this far ahead of the server's
MAX_AGE_MS = 30 * 86_400_000            # offline plays older than 30 days are refused
MAX_BATCH = 200                         # events per upload
MAX_PLAYS_KEPT = 50_000                 # plays of the last MAX_AGE_MS a device group remembers
DAY_MS = 86_400_000

# Per-event outcomes and the stable refusal reasons.
ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REFUSED = "refused"

R_INVALID = "invalid_event"             # a field missing, mistyped or malformed
R_UNKNOWN_TRACK = "unknown_track"       # not a track of the catalog
R_MS_PLAYED = "ms_played_exceeds_duration"
R_OVERLAP = "overlapping_play"          # the device was playing something else then
R_CONCURRENT = "concurrent_plays"       # the account was already playing on MAX_CONCURRENT_PLAYS devices
R_FUTURE = "time_in_future"
R_TOO_OLD = "time_too_old"
R_EVENT_ID_REUSED = "event_id_reused"   # an event id already used for a different play
R_PLAY_LIMIT = "play_limit"             # MAX_PLAYS_KEPT plays in the last MAX_AGE_MS
REASONS = (R_INVALID, R_UNKNOWN_TRACK, R_MS_PLAYED, R_OVERLAP, R_CONCURRENT, R_FUTURE, R_TOO_OLD,
           R_EVENT_ID_REUSED, R_PLAY_LIMIT)

_MARKET = re.compile(r"^[A-Z]{2}$")
_EVENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CONTEXT_KINDS = ("playlist", "album", "artist", "show")


def day_of(ms: int) -> str:
    """The UTC day of a time (ms since the epoch) as YYYY-MM-DD: the stream counts' day."""
    import datetime
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d")


@dataclass
class ListeningEvent:
    """An accepted event as the pipeline carries it (`to_wire`: a msgpack/JSON-able dict)."""
    user_id: str
    event_id: str
    play_id: str                 # "<user>/<first event id of the play>": counted once
    device_id: str
    track_uri: str
    context_uri: str | None
    played_at_ms: int            # client time the play started
    ms_played: int
    received_ms: int             # server time it was accepted
    product: str                 # the user's product when it was accepted ("premium" | "free")
    market: str | None           # the market the client reported for the play (ISO 3166-1 alpha-2)
    private: bool                # in a private session: no recently played, no recommendations
    stream: bool                 # ms_played >= STREAM_THRESHOLD_MS
    source: str = "upload"       # "upload" (batch) | "live" (progress reports)
    play_start_ms: int | None = None   # the play's start (its first event's played_at_ms): its day

    @property
    def day(self) -> str:
        """The day the play is counted on (UTC, of the play's start)."""
        return day_of(self.play_start_ms if self.play_start_ms is not None else self.played_at_ms)

    @property
    def key(self) -> str:
        """Unique over all users: the pipeline's per-event idempotency key."""
        return f"{self.user_id}/{self.event_id}"

    def to_wire(self) -> dict:
        return {"u": self.user_id, "e": self.event_id, "pl": self.play_id, "d": self.device_id,
                "t": self.track_uri, "c": self.context_uri, "at": self.played_at_ms, "ms": self.ms_played,
                "rx": self.received_ms, "pr": self.product, "mk": self.market, "pv": self.private,
                "st": self.stream, "src": self.source, "ps": self.play_start_ms}

    @classmethod
    def from_wire(cls, w: dict) -> ListeningEvent:
        return cls(w["u"], w["e"], w["pl"], w["d"], w["t"], w["c"], w["at"], w["ms"], w["rx"], w["pr"],
                   w["mk"], w["pv"], w["st"], w.get("src", "upload"), w.get("ps"))


@dataclass
class Submitted:
    """One event of an upload, shape-checked (not yet against the catalog or the history)."""
    event_id: str
    device_id: str
    track_uri: str
    context_uri: str | None
    played_at_ms: int
    ms_played: int
    market: str | None
    private: bool


class Malformed(ValueError):
    """An event whose fields are missing or mistyped: refused with R_INVALID and this message."""


def _int(v: Any, name: str, lo: int = 0) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > 2 ** 53:
        raise Malformed(f"{name} must be an integer >= {lo}")
    return v


def parse_event(raw: Any) -> Submitted:
    """The shape of one submitted event; raises Malformed. Track and context uris are checked for
    form here and against the catalog by the device group."""
    from protocols.errors import SyncopateError
    from protocols.uris import parse_uri
    if not isinstance(raw, dict):
        raise Malformed("an event must be an object")
    eid, did = raw.get("event_id"), raw.get("device_id")
    if not isinstance(eid, str) or not _EVENT_ID.match(eid):
        raise Malformed("event_id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")
    if not isinstance(did, str) or not 0 < len(did) <= 128:
        raise Malformed("device_id must be a string of 1 to 128 characters")
    uri = raw.get("uri")
    if not isinstance(uri, str):
        raise Malformed("uri must be a track uri")
    try:
        parse_uri(uri, "track")
    except SyncopateError as err:
        raise Malformed(f"uri: {err.message}") from None
    ctx = raw.get("context_uri")
    if ctx is not None:
        try:
            if not isinstance(ctx, str) or parse_uri(ctx)[0] not in _CONTEXT_KINDS:
                raise Malformed("context_uri must be a playlist, album, artist or show uri")
        except SyncopateError as err:
            raise Malformed(f"context_uri: {err.message}") from None
    market = raw.get("market")
    if market is not None and (not isinstance(market, str) or not _MARKET.match(market)):
        raise Malformed("market must be an ISO 3166-1 alpha-2 code (e.g. SE)")
    private = raw.get("private", False)
    if not isinstance(private, bool):
        raise Malformed("private must be true or false")
    return Submitted(eid, did, uri, ctx, _int(raw.get("played_at_ms"), "played_at_ms", 1),
                     _int(raw.get("ms_played"), "ms_played"), market, private)
