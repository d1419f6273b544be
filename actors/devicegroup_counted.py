"""The device group's exactly-once window: the live reports that counted, as a bounded FIFO set.

Two windows of COUNTED_WINDOW keys each (actors/devicegroup_txn.py): the event ids that counted and
the play keys that counted (a playback id, an int; or "e:<event id>" for a report on no known
playback). A key is kept as 8 bytes: an int key as itself (signed, little-endian), any other key as
the 8-byte blake2b digest of its text (the event digest of actors/devicegroup_plays.py), with one
byte beside it saying which. Membership is a scan of the 8-byte-aligned entries (`bytearray.find`,
memmem in C: ~1 µs over a full window), the oldest entry goes when a new one passes the bound.

Memory. An active user's device group stays resident for hours, and each live report used to leave
two dict entries and two strings here, ~300 bytes until the window filled (~28 hours at the soak's
rate): most of what a host's memory grew by in a soak. Now 9 bytes a key, at most ~18 KB a user.
A digest collision of two of one user's keys (2^-64 a pair) could only make that user's own report
a duplicate, never another user's.

Persistence: `to_wire` is the entries, oldest first: an int, or the 8-byte digest. A snapshot written
before the digests holds the keys themselves (strings and ints): the constructor digests the strings.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from actors.devicegroup_plays import event_digest

_W = 8                                # bytes an entry
_DIGEST, _INT = 0, 1                  # what an entry holds


def _entry(key: Any) -> tuple[bytes, int]:
    if type(key) is int and -(1 << 63) <= key < (1 << 63):
        return key.to_bytes(_W, "little", signed=True), _INT
    if isinstance(key, bytes) and len(key) == _W:
        return key, _DIGEST           # a digest already (a snapshot's entry)
    return event_digest(str(key)), _DIGEST


class CountedWindow:
    __slots__ = ("_buf", "_kind", "cap")

    def __init__(self, cap: int, keys: Iterable[Any] = ()) -> None:
        self.cap = cap
        self._buf = bytearray()       # entries, _W bytes each, oldest first
        self._kind = bytearray()      # _DIGEST or _INT, one byte an entry
        for k in keys:
            self.add(k)

    def __len__(self) -> int:
        return len(self._kind)

    def __contains__(self, key: Any) -> bool:
        return self._has(*_entry(key))

    def _has(self, e: bytes, kind: int) -> bool:
        buf, kinds = self._buf, self._kind
        at = buf.find(e)
        while at != -1:
            if at % _W == 0 and kinds[at // _W] == kind:
                return True
            at = buf.find(e, at + 1)
        return False

    def add(self, key: Any) -> Any:
        """Add a key; past the bound the oldest entry goes: returned when it is an int key (a playback
        id: the caller's floor), else None."""
        e, kind = _entry(key)
        if self._has(e, kind):
            return None               # a set: a key already in the window keeps its place
        self._buf += e
        self._kind.append(kind)
        if len(self._kind) <= self.cap:
            return None
        old, old_kind = bytes(self._buf[:_W]), self._kind[0]
        # deleting from the front of a bytearray moves its start: O(1), no copy of the rest
        del self._buf[:_W]
        del self._kind[:1]
        return int.from_bytes(old, "little", signed=True) if old_kind == _INT else None

    def to_wire(self) -> list:
        buf = self._buf
        return [int.from_bytes(buf[i * _W:(i + 1) * _W], "little", signed=True) if k == _INT
                else bytes(buf[i * _W:(i + 1) * _W]) for i, k in enumerate(self._kind)]
