"""The device group's plays of the last 30 days (protocols/listening.py MAX_AGE_MS): what makes an
uploaded event a duplicate of a play already recorded, and what a device was playing when.

Every accepted listening event (uploaded or live) belongs to one `Play`; the index finds
  - the play an event belongs to: same track, start within PLAY_MATCH_MS (any device);
  - the plays an interval overlaps: one device's (at most none beyond OVERLAP_TOLERANCE_MS), and
    the user's (at most MAX_CONCURRENT_PLAYS at once, over all devices: forged device ids can't
    lift the per-device rule).
The index is rebuilt from the snapshot's list of plays (`to_wire`); it holds no clock of its own:
`prune(now)` is called with the time of the record that adds plays, so a replay prunes the same.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from protocols.listening import MAX_AGE_MS, OVERLAP_TOLERANCE_MS, PLAY_MATCH_MS

MAX_CONCURRENT_PLAYS = 3          # plays of one user at the same instant, over all devices


@dataclass
class Play:
    play_id: str
    track_uri: str
    device_id: str
    start: int                    # played_at_ms of its first event (client clock)
    ms: int                       # the longest ms_played reported for it
    stream: bool
    private: bool
    event_ids: list[str] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.start + self.ms

    def to_wire(self) -> list:
        return [self.play_id, self.track_uri, self.device_id, self.start, self.ms, self.stream, self.private,
                list(self.event_ids)]

    @classmethod
    def from_wire(cls, w: list) -> Play:
        return cls(w[0], w[1], w[2], w[3], w[4], w[5], w[6], list(w[7]))


class PlayIndex:
    def __init__(self) -> None:
        self.plays: dict[str, Play] = {}                 # play id -> play, in the order recorded
        self.by_event: dict[str, str] = {}               # event id -> play id
        self._by_track: dict[str, list[str]] = {}        # track uri -> play ids
        self._by_device: dict[str, list[tuple[int, str]]] = {}   # device -> sorted (start, play id)
        self._all: list[tuple[int, str]] = []            # sorted (start, play id), every device
        self._max_ms = 0                                 # the longest play: how far back a scan looks

    def __len__(self) -> int:
        return len(self.plays)

    # -- queries -------------------------------------------------------------------------------
    def match(self, track_uri: str, start: int) -> Play | None:
        """The play of this track that started within PLAY_MATCH_MS of `start` (the nearest)."""
        best = None
        for pid in self._by_track.get(track_uri, ()):
            p = self.plays[pid]
            d = abs(p.start - start)
            if d <= PLAY_MATCH_MS and (best is None or d < abs(best.start - start)):
                best = p
        return best

    def overlapping(self, start: int, end: int, device_id: str | None = None,
                    exclude: str | None = None) -> list[Play]:
        """The plays (of `device_id`, or of every device) whose interval overlaps [start, end) by more
        than OVERLAP_TOLERANCE_MS."""
        rows = self._all if device_id is None else self._by_device.get(device_id, [])
        lo = bisect.bisect_left(rows, (start - self._max_ms, ""))
        out = []
        for i in range(lo, len(rows)):
            s, pid = rows[i]
            if s >= end - OVERLAP_TOLERANCE_MS:
                break
            p = self.plays[pid]
            if pid != exclude and min(end, p.end) - max(start, p.start) > OVERLAP_TOLERANCE_MS:
                out.append(p)
        return out

    # -- changes (the device group's apply) ---------------------------------------------------------
    def add(self, p: Play) -> None:
        self.plays[p.play_id] = p
        for eid in p.event_ids:
            self.by_event[eid] = p.play_id
        self._by_track.setdefault(p.track_uri, []).append(p.play_id)
        bisect.insort(self._by_device.setdefault(p.device_id, []), (p.start, p.play_id))
        bisect.insort(self._all, (p.start, p.play_id))
        self._max_ms = max(self._max_ms, p.ms)

    def extend(self, play_id: str, event_id: str, ms: int, stream: bool) -> Play:
        """Another event of a recorded play: it may have played longer (and so become a stream)."""
        p = self.plays[play_id]
        p.event_ids.append(event_id)
        self.by_event[event_id] = play_id
        p.ms = max(p.ms, ms)
        p.stream = p.stream or stream
        self._max_ms = max(self._max_ms, p.ms)
        return p

    def prune(self, now: int) -> None:
        """Forget plays that started before the oldest time an upload may still carry (plus the
        match window): no event that can be accepted can be their duplicate. Oldest recorded
        first; a play recorded late with an old start waits for its turn (at most MAX_AGE_MS)."""
        cutoff = now - MAX_AGE_MS - PLAY_MATCH_MS
        while self.plays:
            pid, p = next(iter(self.plays.items()))
            if p.start >= cutoff:
                break
            self._drop(p)

    def _drop(self, p: Play) -> None:
        del self.plays[p.play_id]
        for eid in p.event_ids:
            if self.by_event.get(eid) == p.play_id:
                del self.by_event[eid]
        ids = self._by_track.get(p.track_uri)
        if ids is not None:
            ids.remove(p.play_id)
            if not ids:
                del self._by_track[p.track_uri]
        for rows in (self._by_device.get(p.device_id), self._all):
            if rows is not None:
                i = bisect.bisect_left(rows, (p.start, p.play_id))
                if i < len(rows) and rows[i] == (p.start, p.play_id):
                    del rows[i]
        if not self._by_device.get(p.device_id):
            self._by_device.pop(p.device_id, None)

    # -- persistence -------------------------------------------------------------------------------
    def to_wire(self) -> list:
        return [p.to_wire() for p in self.plays.values()]

    @classmethod
    def from_wire(cls, rows: list) -> PlayIndex:
        ix = cls()
        for w in rows:
            ix.add(Play.from_wire(w))
        return ix
