"""The plain values of the playlist document's Python mirror (actors/playlist_doc.py): `Entry` (one
live Y.Map of `tracks`, possibly malformed until the entity corrects it), `Change` (what one remote
update did, in mirror terms), `Written` (what one command wrote), and `locate` (positions of entries
by identity). No pycrdt here: the document keeps these in step with its CRDT; the entity, the merge
policy (actors/playlist_merge.py) and the snapshot ids (actors/playlist_history.py) read them."""
from __future__ import annotations

from typing import Any


def locate(seq: list, entries: list, hints: list[int] | None = None) -> list[int]:
    """Positions of `entries` in `seq`, by identity. `hints` are likely positions (e.g. as of an
    older snapshot): checked first, with a small window around them; then a C-speed search."""
    n = len(seq)
    out = [-1] * len(entries)
    miss = []
    for k, e in enumerate(entries):
        h = hints[k] if hints is not None else -1
        if 0 <= h < n:
            if seq[h] is e:
                out[k] = h
                continue
            for j in range(max(0, h - 16), min(n, h + 17)):
                if seq[j] is e:
                    out[k] = j
                    break
            if out[k] >= 0:
                continue
        miss.append(k)
    if len(miss) <= 4:
        for k in miss:
            out[k] = seq.index(entries[k])         # identity comparisons, at C speed
    else:
        where = dict(zip(map(id, seq), range(n)))
        for k in miss:
            out[k] = where[id(entries[k])]
    return out



class Entry:
    """One live Y.Map of `tracks`, as plain values. Remote entries may be malformed until the
    entity corrects them: `is_map` False (not a Y.Map), a field MISSING or of a wrong type, or
    `extra` holding unknown keys."""
    __slots__ = ("added_at", "added_by", "alive", "extra", "gen", "id", "is_map", "uri", "yid")

    def __init__(self, id: Any, uri: Any, added_by: Any, added_at: Any, *, is_map: bool = True,
                 extra: set | None = None, gen: int = 0) -> None:
        self.yid: tuple[int, int] | None = None     # its Y.Map's Yjs item id (client, clock), when known
        self.id = id
        self.uri = uri
        self.added_by = added_by
        self.added_at = added_at
        self.is_map = is_map
        self.extra = extra
        self.alive = True
        self.gen = gen

    def well_shaped(self) -> bool:
        return (self.is_map and not self.extra and isinstance(self.id, str) and isinstance(self.uri, str)
                and isinstance(self.added_by, str) and isinstance(self.added_at, (int, float))
                and not isinstance(self.added_at, bool))

    def same_content(self, other: Entry) -> bool:
        return (self.id == other.id and self.uri == other.uri and self.added_by == other.added_by
                and _num(self.added_at) == _num(other.added_at))

    def item(self) -> dict:
        return {"entry_id": self.id, "uri": self.uri, "added_by": self.added_by,
                "added_at": _num(self.added_at)}

    def copy(self, gen: int = 0) -> Entry:
        return Entry(self.id, self.uri, self.added_by, self.added_at, gen=gen)

    def row(self) -> list:
        return [self.id, self.uri, self.added_by, _num(self.added_at)]

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Entry({self.id!r}, {self.uri!r}, {self.added_by!r}, {self.added_at!r}{'' if self.alive else ', dead'})"


def _num(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def plain(v: Any) -> Any:
    """A raw pycrdt value as stored in the mirror: shared types are kept as a marker."""
    if isinstance(v, (str, bool, int, float)) or v is None:
        return v
    return _Shared(type(v).__name__)


class _Shared:
    """A nested shared type (Y.Text, Y.Map, ...) where a primitive belongs: always invalid."""
    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:  # pragma: no cover
        return f"<shared {self.kind}>"


class Change:
    """What one remote update did, in mirror terms (filled by PlaylistDoc.apply_remote)."""
    __slots__ = ("deleted", "edited", "foreign", "inserted", "meta")

    def __init__(self) -> None:
        self.inserted: list[Entry] = []        # new entries, in insertion order (may be dead again)
        self.deleted: list[Entry] = []         # entries removed from the mirror
        self.edited: list[tuple[Entry, dict]] = []   # (entry, {key: (action, old, new)}) for existing entries
        self.meta: dict[str, tuple[str, Any, Any]] = {}   # key -> (action, old, new)
        self.foreign: list[tuple[int, int, int]] = []   # live items outside the schema: (client, clock, length)

    def empty(self) -> bool:
        return not (self.inserted or self.deleted or self.edited or self.meta or self.foreign)


class Written:
    """What one command wrote (PlaylistDoc.finish): its Yjs updates exactly as integrated (the
    records store them) and the successors that its moves added to already moved-away items
    ([client, clock, s_client, s_clock]: stored with them, replay re-adds them)."""
    __slots__ = ("moves", "updates")

    def __init__(self, updates: list[bytes], moves: list[list[int]]) -> None:
        self.updates = updates
        self.moves = moves
