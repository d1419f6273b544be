"""The device group's plays of the last 30 days (protocols/listening.py MAX_AGE_MS): what makes an
uploaded event a duplicate of a play already recorded, and what a device was playing when.

Every accepted listening event (uploaded or live) belongs to one `Play`; the index finds
  - the play an event belongs to: same track, start within PLAY_MATCH_MS (any device);
  - the play an event id was used for (`play_of_event`);
  - the plays an interval overlaps: one device's (at most none beyond OVERLAP_TOLERANCE_MS), and
    the user's (at most MAX_CONCURRENT_PLAYS at once, over all devices: forged device ids can't
    lift the per-device rule).
The index is rebuilt from the snapshot's list of plays (`to_wire`); it holds no clock of its own:
`prune(now)` is called with the time of the record that adds plays, so a replay prunes the same.

Memory. A resident device group keeps these plays for 30 days (up to MAX_PLAYS_KEPT), so a play must
cost little: the index is columns, one slot per play in the order recorded (arrays of starts,
lengths and flags; the track uri interned, one string per catalog track; the device id shared by
the index's plays of that device), and each event id is kept as an 8-byte digest (blake2b), not the
string. A play id is packed too: ids are "<user>/<start>/<event id>" (play_id_for in
actors/devicegroup_events.py), so an id whose user part is the index's owner and whose start is the
play's own start is kept as its event id part only, 16 bytes when that is a UUID (hex or
hyphenated, as clients make them), in one byte buffer with an offset a play; any other id is kept
whole. Each id packs and unpacks to exactly its own text. ~100 bytes a play in all, against ~190
with the id as a string and ~970 when each play was an object with its event ids
(simulations/bench_retention.py, `device.progress`). `Play` is a view made when asked for. A digest
collision of two event ids of one user (2^-64 a pair) could only make that user's own event a
duplicate or refused, never another user's.
"""
from __future__ import annotations

import bisect
import sys
from array import array
from dataclasses import dataclass
from hashlib import blake2b
from uuid import UUID

from protocols.listening import MAX_AGE_MS, OVERLAP_TOLERANCE_MS, PLAY_MATCH_MS

MAX_CONCURRENT_PLAYS = 3          # plays of one user at the same instant, over all devices

_STREAM, _PRIVATE = 1, 2          # the flags column
_DIGEST = 8                       # bytes of an event id's digest


def event_digest(event_id: str) -> bytes:
    return blake2b(event_id.encode(), digest_size=_DIGEST).digest()


# How a play id is packed: the first byte says which form follows.
_WHOLE, _REST, _UUID_HYPHENS, _UUID_HEX = 0, 1, 2, 3


def _pack_rest(rest: str) -> bytes:
    if len(rest) in (32, 36):
        try:
            u = UUID(rest)
        except ValueError:
            u = None
        if u is not None:
            if len(rest) == 36 and str(u) == rest:
                return bytes((_UUID_HYPHENS,)) + u.bytes
            if len(rest) == 32 and u.hex == rest:
                return bytes((_UUID_HEX,)) + u.bytes
    return bytes((_REST,)) + rest.encode()


@dataclass(slots=True)
class Play:
    """One play, as the index answers it (a copy: change it through the index)."""
    play_id: str
    track_uri: str
    device_id: str
    start: int                    # played_at_ms of its first event (client clock)
    ms: int                       # the longest ms_played reported for it
    stream: bool
    private: bool

    @property
    def end(self) -> int:
        return self.start + self.ms


class PlayIndex:
    def __init__(self, owner: str | None = None) -> None:
        self._base = 0                          # the seq of slot 0 (plays are numbered as recorded)
        self._owner = owner                     # the user part of the ids packed short (None: the first id's)
        self._idb = bytearray()                 # packed play ids, slot after slot ...
        self._ide = array("q")                  # ... the end offset in _idb of each slot's id
        self._id_lo = 0                         # where slot 0's id starts in _idb
        self._track: list[str] = []             # track uri (interned), by slot
        self._device: list[str] = []            # device id (one string per distinct id), by slot
        self._start = array("q")
        self._ms = array("q")
        self._flags = bytearray()
        self._nev = array("I")                  # event digests of the play in `_ev`
        self._names: dict[str, str] = {}        # device id -> the one string the slots share
        self._order = array("q")                # the starts, sorted ...
        self._order_seq = array("q")            # ... and the seq of each
        self._ev = bytearray()                  # event id digests, _DIGEST bytes each, as added ...
        self._ev_seq = array("q")               # ... and the seq of each one's play
        self._ev_dead = 0                       # digests of pruned plays still in `_ev`
        self._max_ms = 0                        # the longest play: how far back a scan looks

    def __len__(self) -> int:
        return len(self._start)

    # -- play ids, packed ----------------------------------------------------------------------
    def _pack_id(self, play_id: str, start: int) -> bytes:
        mid = f"/{start}/"
        at = play_id.find(mid)
        if at > 0:
            owner = play_id[:at]
            if self._owner is None:
                self._owner = owner
            if owner == self._owner:
                return _pack_rest(play_id[at + len(mid):])
        return bytes((_WHOLE,)) + play_id.encode()

    def _packed(self, i: int) -> bytes:
        lo = self._ide[i - 1] if i else self._id_lo
        return bytes(self._idb[lo:self._ide[i]])

    def _id(self, i: int) -> str:
        b = self._packed(i)
        form = b[0]
        if form == _WHOLE:
            return b[1:].decode()
        if form == _REST:
            rest = b[1:].decode()
        elif form == _UUID_HYPHENS:
            rest = str(UUID(bytes=b[1:]))
        else:
            rest = UUID(bytes=b[1:]).hex
        return f"{self._owner}/{self._start[i]}/{rest}"

    # -- queries -------------------------------------------------------------------------------
    def _view(self, i: int) -> Play:
        f = self._flags[i]
        return Play(self._id(i), self._track[i], self._device[i], self._start[i], self._ms[i],
                    bool(f & _STREAM), bool(f & _PRIVATE))

    def plays(self) -> list[Play]:
        """Every play, in the order recorded."""
        return [self._view(i) for i in range(len(self._start))]

    def _window(self, lo_start: int, hi_start: int):
        """Slots of the plays with lo_start <= start < hi_start, by start."""
        o, base = self._order, self._base
        for k in range(bisect.bisect_left(o, lo_start), len(o)):
            if o[k] >= hi_start:
                break
            yield self._order_seq[k] - base

    def match(self, track_uri: str, start: int) -> Play | None:
        """The play of this track that started within PLAY_MATCH_MS of `start` (the nearest)."""
        best, best_d = None, 0
        for i in self._window(start - PLAY_MATCH_MS, start + PLAY_MATCH_MS + 1):
            d = abs(self._start[i] - start)
            # the nearest; of two as near, the one recorded first (a replay answers the same)
            if self._track[i] == track_uri and (best is None or d < best_d or (d == best_d and i < best)):
                best, best_d = i, d
        return None if best is None else self._view(best)

    def get(self, play_id: str, start: int | None = None) -> Play | None:
        """The play of this id (`start`: its start, when known, finds it without a scan)."""
        i = self._slot(play_id, start)
        return None if i is None else self._view(i)

    def _slot(self, play_id: str, start: int | None) -> int | None:
        if start is not None:
            packed = None
            for i in self._window(start, start + 1):
                packed = packed or self._pack_id(play_id, start)
                if self._packed(i) == packed:
                    return i
            return None
        return next((i for i in range(len(self._start)) if self._id(i) == play_id), None)

    def play_of_event(self, event_id: str) -> str | None:
        """The id of the recorded play this event id was used for."""
        d, ev, base = event_digest(event_id), self._ev, self._base
        at = ev.find(d)
        while at != -1:
            if at % _DIGEST == 0:
                seq = self._ev_seq[at // _DIGEST]
                if seq >= base:
                    return self._id(seq - base)
            at = ev.find(d, at + 1)
        return None

    def overlapping(self, start: int, end: int, device_id: str | None = None,
                    exclude: str | None = None) -> list[Play]:
        """The plays (of `device_id`, or of every device) whose interval overlaps [start, end) by more
        than OVERLAP_TOLERANCE_MS."""
        out = []
        for i in self._window(start - self._max_ms, end - OVERLAP_TOLERANCE_MS):
            if device_id is not None and self._device[i] != device_id:
                continue
            s = self._start[i]
            if min(end, s + self._ms[i]) - max(start, s) > OVERLAP_TOLERANCE_MS and (
                    exclude is None or self._id(i) != exclude):
                out.append(self._view(i))
        return out

    # -- changes (the device group's apply) ---------------------------------------------------------
    def add(self, p: Play, event_ids: list[str] | list[bytes]) -> None:
        """Record a play and the event ids (or their digests) that belong to it."""
        seq = self._base + len(self._start)
        self._idb += self._pack_id(p.play_id, p.start)
        self._ide.append(len(self._idb))
        self._track.append(sys.intern(p.track_uri))
        self._device.append(self._names.setdefault(p.device_id, p.device_id))
        self._start.append(p.start)
        self._ms.append(p.ms)
        self._flags.append((_STREAM if p.stream else 0) | (_PRIVATE if p.private else 0))
        self._nev.append(0)
        for e in event_ids:
            self._add_event(seq, e)
        k = bisect.bisect_right(self._order, p.start)
        self._order.insert(k, p.start)
        self._order_seq.insert(k, seq)
        self._max_ms = max(self._max_ms, p.ms)

    def _add_event(self, seq: int, event_id: str | bytes) -> None:
        d = event_id if isinstance(event_id, bytes) else event_digest(event_id)
        if len(d) != _DIGEST:
            raise ValueError(f"an event digest is {_DIGEST} bytes, not {len(d)}")
        self._ev += d
        self._ev_seq.append(seq)
        self._nev[seq - self._base] += 1

    def extend(self, play_id: str, event_id: str, ms: int, stream: bool, start: int | None = None) -> Play:
        """Another event of a recorded play: it may have played longer (and so become a stream)."""
        i = self._slot(play_id, start)
        if i is None:
            raise KeyError(play_id)
        self._add_event(self._base + i, event_id)
        self._ms[i] = max(self._ms[i], ms)
        if stream:
            self._flags[i] |= _STREAM
        self._max_ms = max(self._max_ms, self._ms[i])
        return self._view(i)

    def prune(self, now: int) -> None:
        """Forget plays that started before the oldest time an upload may still carry (plus the
        match window): no event that can be accepted can be their duplicate. Oldest recorded
        first; a play recorded late with an old start waits for its turn (at most MAX_AGE_MS)."""
        cutoff = now - MAX_AGE_MS - PLAY_MATCH_MS
        n = 0
        while n < len(self._start) and self._start[n] < cutoff:
            n += 1
        if n:
            self._drop_first(n)

    def _drop_first(self, n: int) -> None:
        for i in range(n):
            s, seq = self._start[i], self._base + i
            k = bisect.bisect_left(self._order, s)
            while self._order_seq[k] != seq:
                k += 1
            del self._order[k]
            del self._order_seq[k]
            self._ev_dead += self._nev[i]
        self._id_lo = self._ide[n - 1]
        for col in (self._ide, self._track, self._device, self._start, self._ms, self._flags, self._nev):
            del col[:n]
        self._base += n
        if self._id_lo > 4096 and self._id_lo * 2 > len(self._idb):
            # the pruned ids' bytes go once they are half the buffer (amortised: no copy a prune)
            lo = self._id_lo
            del self._idb[:lo]
            self._ide = array("q", (e - lo for e in self._ide))
            self._id_lo = 0
        if self._ev_dead > max(64, len(self._ev_seq) // 2):
            self._compact_events()

    def _compact_events(self) -> None:
        """Drop the digests of pruned plays (their seq is below the base); and the device ids no
        slot uses any more."""
        base, ev, keep, seqs = self._base, self._ev, bytearray(), array("q")
        for j, seq in enumerate(self._ev_seq):
            if seq >= base:
                keep += ev[j * _DIGEST:(j + 1) * _DIGEST]
                seqs.append(seq)
        self._ev, self._ev_seq, self._ev_dead = keep, seqs, 0
        self._names = {d: d for d in self._device}

    # -- persistence -------------------------------------------------------------------------------
    def to_wire(self) -> list:
        """[play id, track, device, start, ms, stream, private, [event digests]] a play, as recorded."""
        evs: list[list[bytes]] = [[] for _ in range(len(self._start))]
        base, ev = self._base, self._ev
        for j, seq in enumerate(self._ev_seq):
            if seq >= base:
                evs[seq - base].append(bytes(ev[j * _DIGEST:(j + 1) * _DIGEST]))
        return [[p.play_id, p.track_uri, p.device_id, p.start, p.ms, p.stream, p.private, evs[i]]
                for i, p in enumerate(self.plays())]

    @classmethod
    def from_wire(cls, rows: list, owner: str | None = None) -> PlayIndex:
        """Rows of `to_wire`; the event ids of a snapshot written before the digests are strings."""
        ix = cls(owner)
        for w in rows:
            ix.add(Play(w[0], w[1], w[2], w[3], w[4], w[5], w[6]), list(w[7]))
        return ix
