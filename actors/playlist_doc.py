"""The playlist's CRDT document (pycrdt) and a Python mirror of it, kept in lock step.

Document schema (the public contract for Yjs clients, docs/playlist-document.md):

  meta    Y.Map   {name: str, description: str, public: bool, collaborative: bool}
  tracks  Y.Array of Y.Map {id: str, uri: str, added_by: str, added_at: number (unix ms)}

`PlaylistDoc` owns one pycrdt document and mirrors it in plain Python: `entries` (a list of
`Entry`, same order as the Y.Array, one object per live Y.Map), `by_id` and `meta`. Reads and
positional lookups use the mirror and never walk pycrdt. The mirror follows every transaction:

- local (server) edits go through `insert`, `delete_positions`, `set_meta`, ..., which change the
  document and the mirror together (the observers ignore them);
- remote updates (Yjs clients, and every record on replay) go through `apply_remote`, whose
  observers translate the Yjs deltas into mirror changes and report what changed (`Change`), so
  the entity can validate and correct.

Every transaction's binary update is captured (`drain()`): the entity persists those bytes as its
records, so storage holds the CRDT update history itself, never a projection of it.

Speed: pycrdt (yrs) finds an array index by walking the item list (~9 ns per item), so inserting k
entries one by one at the end of an n-entry list costs k walks of n items (quadratic for bulk
adds). `insert` therefore inserts only the last entry natively (one walk), reads that item's left
origin from the captured update, and encodes the other entries directly as a Yjs v1 update whose
items chain off that origin (`origin` = the previous new item, `rightOrigin` = the native item):
yrs integrates those by item id, without walking. 10,000 entries: ~60 ms instead of ~550 ms.
(See encode_entry_chain for the clock layout that keeps tombstones of churned entries compact.)
"""
from __future__ import annotations

import secrets
import struct
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import orjson
from pycrdt import _pycrdt as Y

ENTRY_KEYS = ("id", "uri", "added_by", "added_at")
ENTRY_KEYSET = frozenset(ENTRY_KEYS)
META_KEYS = ("name", "description", "public", "collaborative")
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
GRAVEYARD_SIZE = 4096          # recently deleted entries remembered (an undo re-inserts a copy)
_LOCAL_ORIGIN = 0x5E17E5        # origin of server-side transactions


# -- lib0 / Yjs v1 encoding ---------------------------------------------------------------------------
def write_var_uint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_var_uint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n, pos


def _var_string(s: str) -> bytes:
    b = s.encode()
    return write_var_uint(len(b)) + b


def decode_state_vector(sv: bytes) -> dict[int, int]:
    n, pos = read_var_uint(sv, 0)
    out = {}
    for _ in range(n):
        client, pos = read_var_uint(sv, pos)
        clock, pos = read_var_uint(sv, pos)
        out[client] = clock
    return out


_KEY_HEAD = {k: _var_string(k) for k in ENTRY_KEYS}


def _any(value: Any) -> bytes:
    """lib0 writeAny for the values an entry holds (strings and numbers)."""
    if isinstance(value, str):
        return b"\x77" + _var_string(value)
    return b"\x7b" + struct.pack(">d", float(value))


def encode_entry_chain(client: int, clock: int, left: tuple[int, int] | None,
                       right: tuple[int, int], entries: list[Entry]) -> bytes:
    """A Yjs v1 update inserting `entries` (each a Y.Map of the four entry keys) in order between
    the item `left` (None = the start of the array) and the item `right`, as `client` from `clock`.

    The k Y.Map items take clocks clock .. clock+k-1, each with the previous one as origin and
    `right` as right origin, and their 4k key items follow. Consecutive clocks and a chained
    origin let yrs squash the tombstones of entries deleted together (a replace, a batch removed
    again, a range moved again) into one block, so list walks do not slow down with churn."""
    k = len(entries)
    parts: list[bytes] = []
    add = parts.append
    vu = write_var_uint
    rid = vu(right[0]) + vu(right[1])
    cl = vu(client)
    tail = rid + b"\x01"                                      # rightOrigin, ContentType: YMap
    add((b"\x47" if left is None else b"\xc7" + vu(left[0]) + vu(left[1])) + tail)
    for c in range(clock, clock + k - 1):
        add(b"\xc7" + cl + vu(c) + tail)                       # origin: the previous new entry
    strs: dict[str, bytes] = {}

    def s(v: str) -> bytes:
        b = strs.get(v)
        if b is None:
            b = strs[v] = b"\x77" + _var_string(v)
        return b

    for i, e in enumerate(entries):
        head = b"\x28\x00" + cl + vu(clock + i)                # info: parentSub | ContentAny; parent = ID
        add(head + b"\x02id\x01\x77" + _var_string(e.id) + head + b"\x03uri\x01" + s(e.uri)
            + head + b"\x08added_by\x01" + s(e.added_by) + head + b"\x08added_at\x01\x7b"
            + struct.pack(">d", float(e.added_at)))
    return b"\x01" + vu(5 * k) + cl + vu(clock) + b"".join(parts) + b"\x00"


def _first_struct(update: bytes) -> tuple[int, int, tuple[int, int] | None]:
    """(client, clock, origin) of the first struct of a single-client update."""
    _, pos = read_var_uint(update, 0)
    _, pos = read_var_uint(update, pos)
    client, pos = read_var_uint(update, pos)
    clock, pos = read_var_uint(update, pos)
    info = update[pos]
    pos += 1
    origin = None
    if info & 0x80:
        oc, pos = read_var_uint(update, pos)
        ok, pos = read_var_uint(update, pos)
        origin = (oc, ok)
    return client, clock, origin


def fresh_client_id(taken: Iterable[int] = ()) -> int:
    """A random 32-bit Yjs client id (as Yjs picks them) not present in `taken`."""
    taken = set(taken)
    while True:
        cid = secrets.randbits(32)
        if cid and cid not in taken:
            return cid


# -- the mirror ----------------------------------------------------------------------------------------
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
    __slots__ = ("added_at", "added_by", "alive", "extra", "gen", "id", "is_map", "uri")

    def __init__(self, id: Any, uri: Any, added_by: Any, added_at: Any, *, is_map: bool = True,
                 extra: set | None = None, gen: int = 0) -> None:
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


def _plain(v: Any) -> Any:
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
    __slots__ = ("deleted", "edited", "inserted", "junk_roots", "meta")

    def __init__(self) -> None:
        self.inserted: list[Entry] = []        # new entries, in insertion order (may be dead again)
        self.deleted: list[Entry] = []         # entries removed from the mirror
        self.edited: list[tuple[Entry, dict]] = []   # (entry, {key: (action, old, new)}) for existing entries
        self.meta: dict[str, tuple[str, Any, Any]] = {}   # key -> (action, old, new)
        self.junk_roots: list[str] = []

    def empty(self) -> bool:
        return not (self.inserted or self.deleted or self.edited or self.meta or self.junk_roots)


class PlaylistDoc:
    def __init__(self, update: bytes | None = None, client_id: int | None = None,
                 rows: list | None = None) -> None:
        """An empty document, or one loaded from a full update (a snapshot). The server's client id
        is random and never one the document already holds (a restarted server must not reuse a
        client id with lower clocks). `rows` ([[id, uri, added_by, added_at], ...], the mirror as
        snapshotted) spares reading the entries back out of the document."""
        self.client_id = client_id if client_id is not None else fresh_client_id()
        while True:
            self.ydoc = Y.Doc(self.client_id, None, None)
            txn = self.ydoc.create_transaction()
            try:
                self.tracks = self.ydoc.get_or_insert_array(txn, "tracks")
                self.meta_map = self.ydoc.get_or_insert_map(txn, "meta")
                if update:
                    self.ydoc.apply_update(txn, update)
                txn.commit()
            finally:
                txn.drop()
            taken = decode_state_vector(self.state_vector()) if update else {}
            if self.client_id not in taken or client_id is not None:
                break
            self.client_id = fresh_client_id(taken)          # 1 in 2**32 per client in the doc
        self.entries: list[Entry] = []
        self.by_id: dict[str, Entry] = {}
        self.dups: dict[str, list[Entry]] = {}         # further live copies of an id (transient)
        self.meta: dict[str, Any] = {}
        # recently deleted entries, and who deleted them: id -> (entry, deleter user id)
        self.graveyard: OrderedDict[str, tuple[Entry, str | None]] = OrderedDict()
        self.actor: str | None = None                  # the user whose command is being applied
        self.gen = 0                                   # bumped by the entity per command
        self._updates: list[bytes] = []
        self.trash: list[Entry] = []                   # entries removed since the entity last cleared it
        self._local = False
        self._raw: list = []
        if update:
            self._load_mirror(rows)
        self._subs = [self.ydoc.observe(self._on_txn),
                      self.tracks.observe_deep(self._on_tracks),
                      self.meta_map.observe(self._on_meta)]

    # -- observers -------------------------------------------------------------------------------
    def _on_txn(self, event) -> None:
        self._updates.append(event.update)

    def _on_tracks(self, events) -> None:
        if self._local:
            return
        for ev in events:
            path = ev.path
            if not path:
                self._raw.append(("d", ev.delta))
            elif len(path) == 1 and hasattr(ev, "keys"):
                self._raw.append(("k", path[0], ev.keys))
            else:
                self._raw.append(("x", path[0]))

    def _on_meta(self, event) -> None:
        if not self._local:
            self._raw.append(("m", event.keys))

    # -- reading ---------------------------------------------------------------------------------------
    def _load_mirror(self, snap_rows: list | None = None) -> None:
        """Build the mirror of a freshly loaded document in one pass (to_json: no per-index walks;
        or the snapshot's rows when they match). Loaded state was validated when it was written,
        so JSON values are the stored values."""
        txn = self.ydoc.create_transaction()
        try:
            if snap_rows is not None and len(snap_rows) == self.tracks.len(txn):
                rows = snap_rows
            else:
                rows = orjson.loads(self.tracks.to_json(txn))
            for k in self.meta_map.keys(txn):
                self.meta[k] = _plain(self.meta_map.get(txn, k))
        finally:
            txn.drop()
        entries = []
        users: dict[str, str] = {}
        for r in rows:
            if isinstance(r, list):
                by = users.setdefault(r[2], r[2])          # share the few added_by strings
                e = Entry(r[0], r[1], by, r[3])
            elif isinstance(r, dict):
                extra = set(r) - ENTRY_KEYSET or None
                e = Entry(r.get("id", MISSING), r.get("uri", MISSING), r.get("added_by", MISSING),
                          r.get("added_at", MISSING), extra=extra)
            else:
                e = Entry(None, None, None, None, is_map=False)
            entries.append(e)
            self._index_add(e)
        self.entries = entries

    def _read_value(self, txn, value) -> Entry:
        if not isinstance(value, Y.Map):
            return Entry(None, None, None, None, is_map=False, gen=self.gen)
        vals = dict.fromkeys(ENTRY_KEYS, MISSING)
        extra = None
        for k in value.keys(txn):
            if k in ENTRY_KEYSET:
                vals[k] = _plain(value.get(txn, k))
            else:
                extra = extra or set()
                extra.add(k)
        return Entry(vals["id"], vals["uri"], vals["added_by"], vals["added_at"], extra=extra, gen=self.gen)

    def state_vector(self) -> bytes:
        txn = self.ydoc.create_transaction()
        try:
            return self.ydoc.get_state(txn)
        finally:
            txn.drop()

    def diff(self, state_vector: bytes | None = None) -> bytes:
        txn = self.ydoc.create_transaction()
        try:
            return self.ydoc.get_update(txn, state_vector or b"\x00")
        finally:
            txn.drop()

    def full_update(self) -> bytes:
        return self.diff(None)

    def item_id(self, pos: int) -> tuple[int, int]:
        """The Yjs item id (client, clock) of the entry at `pos` (walks the list: use sparingly)."""
        txn = self.ydoc.create_transaction()
        try:
            sticky = self.tracks.sticky_index(txn, pos, 0)
        finally:
            txn.drop()
        item = orjson.loads(sticky.to_json_string())["item"]
        return item["client"], item["clock"]

    def drain(self) -> list[bytes]:
        out, self._updates = self._updates, []
        return out

    def positions(self, entries: list[Entry], hints: list[int] | None = None) -> list[int]:
        """Current positions of live `entries` (see `locate`)."""
        return locate(self.entries, entries, hints)

    # -- mirror bookkeeping ---------------------------------------------------------------------------
    def _index_add(self, e: Entry) -> None:
        if isinstance(e.id, str):
            if e.id in self.by_id:
                self.dups.setdefault(e.id, []).append(e)
            else:
                self.by_id[e.id] = e

    def _index_remove(self, e: Entry) -> None:
        e.alive = False
        i = e.id
        if not isinstance(i, str):
            return
        if self.by_id.get(i) is e:
            more = self.dups.get(i)
            if more:
                self.by_id[i] = more.pop(0)
                if not more:
                    del self.dups[i]
            else:
                del self.by_id[i]
                # only entries of an earlier command: a correction's victims were never valid state
                if e.gen != self.gen and e.well_shaped():
                    self.graveyard[i] = (e, self.actor)
                    self.graveyard.move_to_end(i)
                    if len(self.graveyard) > GRAVEYARD_SIZE:
                        self.graveyard.popitem(last=False)
        else:
            more = self.dups.get(i)
            if more and e in more:
                more.remove(e)
                if not more:
                    del self.dups[i]

    def _index_rekey(self, e: Entry, new_id: Any) -> None:
        """An entry's `id` field changed (a remote edit)."""
        self._index_remove(e)
        e.alive = True
        e.id = new_id
        self._index_add(e)

    def copies(self, entry_id: str) -> list[Entry]:
        first = self.by_id.get(entry_id)
        if first is None:
            return []
        return [first, *self.dups.get(entry_id, ())]

    # -- local (server) edits -------------------------------------------------------------------------
    def _txn(self):
        return self.ydoc.create_transaction_with_origin(_LOCAL_ORIGIN)

    def _run(self, fn) -> None:
        self._local = True
        txn = self._txn()
        try:
            fn(txn)
            txn.commit()
        finally:
            txn.drop()
            self._local = False

    def insert(self, index: int, entries: list[Entry]) -> None:
        """Insert well-formed entries at `index` (see the module docstring for the method)."""
        if not entries:
            return
        last = entries[-1]

        def native(txn):
            m = self.tracks.insert_map_prelim(txn, index)
            m.insert(txn, "id", last.id)
            m.insert(txn, "uri", last.uri)
            m.insert(txn, "added_by", last.added_by)
            m.insert(txn, "added_at", float(last.added_at))

        self._run(native)
        if len(entries) > 1:
            client, clock, left = _first_struct(self._updates[-1])
            update = encode_entry_chain(client, clock + 5, left, (client, clock), entries[:-1])
            self._run(lambda txn: self.ydoc.apply_update(txn, update))
        self.entries[index:index] = entries
        for e in entries:
            e.alive = True
            self._index_add(e)

    def delete_positions(self, positions: Iterable[int]) -> list[Entry]:
        """Delete the entries at these positions (any order, no duplicates)."""
        ps = sorted(set(positions), reverse=True)
        if not ps:
            return []
        runs: list[tuple[int, int]] = []          # (start, length), descending
        for p in ps:
            if runs and runs[-1][0] - 1 == p:
                runs[-1] = (p, runs[-1][1] + 1)
            else:
                runs.append((p, 1))

        def remove(txn):
            for start, length in runs:
                self.tracks.remove_range(txn, start, length)

        self._run(remove)
        removed: list[Entry] = []
        for start, length in runs:
            chunk = self.entries[start:start + length]
            del self.entries[start:start + length]
            for e in chunk:
                self._index_remove(e)
            removed[:0] = chunk
        self.trash.extend(removed)
        return removed

    def set_meta(self, changes: dict[str, Any], remove: Iterable[str] = ()) -> None:
        remove = list(remove)
        if not changes and not remove:
            return

        def write(txn):
            for k, v in changes.items():
                self.meta_map.insert(txn, k, v)
            for k in remove:
                self.meta_map.remove(txn, k)

        self._run(write)
        for k, v in changes.items():
            self.meta[k] = v
        for k in remove:
            self.meta.pop(k, None)

    def set_entry_fields(self, pos: int, changes: dict[str, Any], remove: Iterable[str] = ()) -> None:
        """Rewrite fields of the entry at `pos` (used to revert remote edits of existing entries)."""
        remove = list(remove)
        e = self.entries[pos]

        def write(txn):
            m = self.tracks.get(txn, pos)
            for k, v in changes.items():
                m.insert(txn, k, float(v) if k == "added_at" else v)
            for k in remove:
                m.remove(txn, k)

        self._run(write)
        for k, v in changes.items():
            if k == "id" and v != e.id:
                self._index_rekey(e, v)
            else:
                setattr(e, k, v)
        for k in remove:
            if e.extra:
                e.extra.discard(k)

    def clear_junk_root(self, name: str) -> None:
        def clear(txn):
            m = self.ydoc.get_or_insert_map(txn, name)
            for k in list(m.keys(txn)):
                m.remove(txn, k)
        self._run(clear)

    # -- remote updates ------------------------------------------------------------------------------
    def apply_remote(self, update: bytes) -> Change:
        """Apply a Yjs update from outside (a client, or a record on replay) and mirror it.
        A malformed update raises ValueError and changes nothing."""
        self._raw = []
        txn = self.ydoc.create_transaction()
        try:
            self.ydoc.apply_update(txn, update)
            txn.commit()
        finally:
            txn.drop()
        change = Change()
        raw, self._raw = self._raw, []
        if raw:
            self._mirror(raw, change)
        if len(self._roots()) > 2:
            change.junk_roots = [n for n in self._roots() if n not in ("tracks", "meta")]
        return change

    def _roots(self) -> list[str]:
        txn = self.ydoc.create_transaction()
        try:
            return list(self.ydoc.roots(txn))
        finally:
            txn.drop()

    def _mirror(self, raw: list, change: Change) -> None:
        txn = self.ydoc.create_transaction()
        try:
            for item in sorted(raw, key=lambda it: it[0] != "d"):     # the array's delta first
                tag = item[0]
                if tag == "d":
                    pos = 0
                    for op in item[1]:
                        if "retain" in op:
                            pos += op["retain"]
                        elif "delete" in op:
                            n = op["delete"]
                            gone = self.entries[pos:pos + n]
                            del self.entries[pos:pos + n]
                            for e in gone:
                                self._index_remove(e)
                            change.deleted.extend(gone)
                            self.trash.extend(gone)
                        elif "insert" in op:
                            new = [self._read_value(txn, v) for v in op["insert"]]
                            self.entries[pos:pos] = new
                            for e in new:
                                self._index_add(e)
                            change.inserted.extend(new)
                            pos += len(new)
                elif tag == "k":
                    e = self.entries[item[1]]
                    keys = {}
                    for k, d in item[2].items():
                        action = d.get("action")
                        old = _plain(d.get("oldValue", MISSING)) if "oldValue" in d else MISSING
                        new = _plain(d.get("newValue")) if action != "delete" else MISSING
                        keys[k] = (action, old, new)
                        if k in ENTRY_KEYSET:
                            if k == "id":
                                self._index_rekey(e, new)
                            else:
                                setattr(e, k, new)
                        elif action == "delete":
                            if e.extra:
                                e.extra.discard(k)
                        else:
                            e.extra = e.extra or set()
                            e.extra.add(k)
                    if e.gen != self.gen:
                        change.edited.append((e, keys))
                elif tag == "x":
                    e = self.entries[item[1]]
                    if e.gen != self.gen:
                        change.edited.append((e, {}))
                elif tag == "m":
                    for k, d in item[1].items():
                        action = d.get("action")
                        old = _plain(d["oldValue"]) if "oldValue" in d else MISSING
                        new = _plain(d.get("newValue")) if action != "delete" else MISSING
                        prev = change.meta.get(k)
                        change.meta[k] = (action, prev[1] if prev else old, new)
                        if action == "delete":
                            self.meta.pop(k, None)
                        else:
                            self.meta[k] = new
        finally:
            txn.drop()
