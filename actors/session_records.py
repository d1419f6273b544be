"""What a session entity persists: one record per committed command, and `SessionSnapshot`.

Each record is a dataclass with readable field names and the version it becomes; `to_wire` gives the
msgpack-able value the host stores, `record_from_wire` reads every form ever stored:

  version 2 (today)   {"v": 2, "type": "connected", "version": n, "conn": [gw, conn], "device_id",
                       "client", "gateway", "at_ms"}
                      {"v": 2, "type": "disconnected", "version": n, "conns": [[gw, conn], ...], "reason"}
                      {"v": 2, "type": "signed_out", "version": n, "device_id", "at_ms"}
                      {"v": 2, "type": "library", "version": n, "changes": [[op, type code, id, added_at], ...]}
                      {"v": 2, "type": "collaborating", "version": n, "playlist_id", "role": role | None}
  version 1 (before)  ["conn", v, conn, device_id, client, gateway, now], ["disc", v, [conns], reason],
                      ["end", v, device_id, now], ["lib", v, [[op, type code, id, added_at], ...]],
                      ["collab", v, playlist id, role | None]
                      with connection addresses as "gw/conn" strings

A library change item stays the compact row `[op "s"|"r", type code, id, added_at]` on the wire (a
record holds up to 50, the snapshot's change log 512): in memory it is an `ItemChange` (a named
tuple, so it packs as that same row).

The snapshot of version 2 is {"format": 2, "version", "library" (actors/library.py: packed columns),
"connections": [{conn, device_id, client, gateway, since_ms, seen_ms}], "revoked": [{device_id,
at_ms}] (oldest first), "changes": [{version, changes}], "changes_floor", "collaborating": [{playlist_id, role}]}; version 1 was
{"f": 1, "v", "lib", "conns": [[conn, device_id, client, gateway, since, seen]], "revoked": [[device,
at]], "log": [[v, changes]], "floor", "collab": [[playlist id, role]] (from the data rights on)}.
"""
from __future__ import annotations

import struct
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

from protocols.wire import ConnAddress

RECORD_VERSION = 2
SNAPSHOT_VERSION = 2


class ItemChange(NamedTuple):
    """One library item saved ("s", with its added_at) or removed ("r")."""
    op: str
    type_code: int
    id: str
    added_at: int | None


_ITEM = struct.Struct("<BBqH")      # op, type code, added_at (_NO_TIME: None), id length; the id follows
_NO_TIME = -(1 << 63)


def pack_changes(changes: Iterable[ItemChange]) -> bytes:
    out = bytearray()
    for op, code, ident, added_at in changes:
        raw = ident.encode()
        out += _ITEM.pack(ord(op), code, _NO_TIME if added_at is None else added_at, len(raw))
        out += raw
    return bytes(out)


def unpack_changes(packed: bytes) -> list[ItemChange]:
    out, at, n = [], 0, len(packed)
    while at < n:
        op, code, added_at, k = _ITEM.unpack_from(packed, at)
        at += _ITEM.size
        out.append(ItemChange(chr(op), code, packed[at:at + k].decode(), None if added_at == _NO_TIME else added_at))
        at += k
    return out


class ChangeLog:
    """The session's library change log (what `session.subscribe` with `since` answers from): every
    change after `floor`, at most `max_items` items (the oldest records go first, the newest record
    always stays).

    A resident session keeps it for as long as it is active, so it is kept packed: a record is its
    version in an array and its items in one bytes object (`pack_changes`: 12 bytes and the id's
    UTF-8 an item), ~85 bytes a one-item record against ~360 when it was a list of named tuples of
    strings and ints (simulations/bench_retention.py `library.save`). Iterating gives (version,
    [ItemChange]) oldest first, as the deque it replaces did, and the snapshot's form is unchanged."""

    def __init__(self, max_items: int, entries: Iterable[tuple[int, list]] = (), floor: int = 0) -> None:
        if max_items < 1:
            raise ValueError("a change log holds at least one item")
        self.max_items = max_items
        self.floor = floor                 # the log holds every change after this version
        self.items = 0
        self._v = array("q")               # version of each record, oldest first
        self._n = array("l")               # items of each record
        self._packed: list[bytes] = []     # the items of each record
        for v, changes in entries:
            self.append(v, changes)

    def __len__(self) -> int:
        return len(self._v)

    def __iter__(self) -> Iterator[tuple[int, list[ItemChange]]]:
        for v, packed in zip(self._v, self._packed):
            yield v, unpack_changes(packed)

    def since(self, version: int) -> Iterator[tuple[int, list[ItemChange]]]:
        """The records after `version` (which the caller checked is >= floor), oldest first."""
        v = self._v
        lo, hi = 0, len(v)
        while lo < hi:                     # the versions increase: the first one above `version`
            mid = (lo + hi) // 2
            if v[mid] <= version:
                lo = mid + 1
            else:
                hi = mid
        for k in range(lo, len(v)):
            yield v[k], unpack_changes(self._packed[k])

    def append(self, version: int, changes: Iterable[ItemChange]) -> None:
        changes = list(changes)
        packed, n = pack_changes(changes), len(changes)
        self._v.append(version)
        self._n.append(n)
        self._packed.append(packed)
        self.items += n
        drop = 0
        while self.items > self.max_items and len(self._v) - drop > 1:
            self.items -= self._n[drop]
            self.floor = self._v[drop]
            drop += 1
        if drop:
            del self._v[:drop], self._n[:drop], self._packed[:drop]


@dataclass(slots=True)
class Presence:
    """One open connection of the user (soft state: `seen_ms` moves with heartbeats, unrecorded)."""
    device_id: str | None
    client: str
    gateway: str
    since_ms: int
    seen_ms: int


@dataclass
class Connected:
    version: int
    conn: ConnAddress
    device_id: str | None
    client: str
    gateway: str
    at_ms: int

    def to_wire(self) -> dict:
        return {"v": RECORD_VERSION, "type": "connected", "version": self.version, "conn": list(self.conn),
                "device_id": self.device_id, "client": self.client, "gateway": self.gateway, "at_ms": self.at_ms}


@dataclass
class Disconnected:
    version: int
    conns: list[ConnAddress]
    reason: str                   # "disconnected" | "timeout"

    def to_wire(self) -> dict:
        return {"v": RECORD_VERSION, "type": "disconnected", "version": self.version,
                "conns": [list(c) for c in self.conns], "reason": self.reason}


@dataclass
class SignedOut:
    version: int
    device_id: str
    at_ms: int

    def to_wire(self) -> dict:
        return {"v": RECORD_VERSION, "type": "signed_out", "version": self.version, "device_id": self.device_id,
                "at_ms": self.at_ms}


@dataclass
class LibraryChanged:
    version: int
    changes: list[ItemChange]

    def to_wire(self) -> dict:
        return {"v": RECORD_VERSION, "type": "library", "version": self.version,
                "changes": [list(c) for c in self.changes]}


@dataclass
class CollabChanged:
    """The user's role on a playlist changed (actors/session_rights.py): None = no longer a collaborator
    (the playlist stays indexed: the user's entries may still be in it)."""
    version: int
    playlist_id: str
    role: str | None

    def to_wire(self) -> dict:
        return {"v": RECORD_VERSION, "type": "collaborating", "version": self.version,
                "playlist_id": self.playlist_id, "role": self.role}


SessionRecord = Union[Connected, Disconnected, SignedOut, LibraryChanged, CollabChanged]


def _items(rows) -> list[ItemChange]:
    return [ItemChange(*row) for row in rows]


def record_from_wire(rec: Any) -> SessionRecord:
    if isinstance(rec, dict):
        if rec.get("v") != RECORD_VERSION:
            raise ValueError(f"unknown session record version {rec.get('v')!r}")
        t, v = rec.get("type"), rec["version"]
        if t == "connected":
            return Connected(v, ConnAddress.parse(rec["conn"]), rec["device_id"], rec["client"], rec["gateway"],
                             rec["at_ms"])
        if t == "disconnected":
            return Disconnected(v, [ConnAddress.parse(c) for c in rec["conns"]], rec["reason"])
        if t == "signed_out":
            return SignedOut(v, rec["device_id"], rec["at_ms"])
        if t == "library":
            return LibraryChanged(v, _items(rec["changes"]))
        if t == "collaborating":
            return CollabChanged(v, rec["playlist_id"], rec["role"])
        raise ValueError(f"unknown session record {t!r}")
    tag, v = rec[0], rec[1]                     # version 1: positional lists
    if tag == "conn":
        _, _, conn, device_id, client, gateway, now = rec
        return Connected(v, ConnAddress.parse(conn), device_id, client, gateway, now)
    if tag == "disc":
        return Disconnected(v, [ConnAddress.parse(c) for c in rec[2]], rec[3])
    if tag == "end":
        return SignedOut(v, rec[2], rec[3])
    if tag == "lib":
        return LibraryChanged(v, _items(rec[2]))
    if tag == "collab":
        return CollabChanged(v, rec[2], rec[3])
    raise ValueError(f"unknown session record {tag!r}")


@dataclass
class SessionSnapshot:
    version: int
    library: Any                                   # actors/library.py Library.dump()
    connections: dict[ConnAddress, Presence]
    revoked: dict[str, int]                        # device id -> signed out at (ms), oldest first
    changes: deque = field(default_factory=deque)  # (version, [ItemChange]) oldest first
    changes_floor: int = 0                         # the change log holds every change after this
    collaborating: dict = field(default_factory=dict)   # playlist id -> role | None, oldest first

    def to_wire(self) -> dict:
        return {"format": SNAPSHOT_VERSION, "version": self.version, "library": self.library,
                "connections": [{"conn": list(c), "device_id": p.device_id, "client": p.client, "gateway": p.gateway,
                                 "since_ms": p.since_ms, "seen_ms": p.seen_ms} for c, p in self.connections.items()],
                "revoked": [{"device_id": d, "at_ms": at} for d, at in self.revoked.items()],
                "changes": [{"version": v, "changes": [list(c) for c in ch]} for v, ch in self.changes],
                "changes_floor": self.changes_floor,
                "collaborating": [{"playlist_id": p, "role": r} for p, r in self.collaborating.items()]}

    @classmethod
    def from_wire(cls, data: dict) -> SessionSnapshot:
        if data.get("format") == SNAPSHOT_VERSION:
            return cls(version=data["version"], library=data.get("library"),
                       connections={ConnAddress.parse(c["conn"]): Presence(c["device_id"], c["client"], c["gateway"],
                                                                           c["since_ms"], c["seen_ms"])
                                    for c in data["connections"]},
                       revoked={r["device_id"]: r["at_ms"] for r in data["revoked"]},
                       changes=deque((e["version"], _items(e["changes"])) for e in data["changes"]),
                       changes_floor=data["changes_floor"],
                       collaborating={c["playlist_id"]: c["role"] for c in data.get("collaborating", ())})
        if data.get("f") != 1:
            raise ValueError(f"unknown session snapshot format {data.get('format', data.get('f'))!r}")
        return cls(version=data.get("v", 0), library=data.get("lib"),
                   connections={ConnAddress.parse(c[0]): Presence(*c[1:]) for c in data.get("conns", ())},
                   revoked={d: at for d, at in data.get("revoked", ())},
                   changes=deque((v, _items(ch)) for v, ch in data.get("log", ())),
                   changes_floor=data.get("floor", 0),
                   collaborating={p: r for p, r in data.get("collab", ())})
