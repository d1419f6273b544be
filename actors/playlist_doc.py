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

Item ids: every entry knows the Yjs item id (client, clock) of its Y.Map (`Entry.yid`): server
inserts know the clocks they write; remote ones are read out of the integrated update
(`scan_update`: a linear lib0 decoder of Yjs v1 updates, which also yields an update's delete set).
The `tomb` remembers recently moved-away items (deleted while the entry lived on as a copy) with
the copies their moves wrote, so that the entity can tell a late delete of a moved entry from a
client merely knowing the move (PlaylistEntity._concurrent_deletes).

Speed: pycrdt (yrs) finds an array index by walking the item list (~9 ns per item), so inserting k
entries one by one at the end of an n-entry list costs k walks of n items (quadratic for bulk
adds). `insert` therefore inserts only the last entry natively (one walk), reads that item's left
origin from the captured update, and encodes the other entries directly as a Yjs v1 update whose
items chain off that origin (`origin` = the previous new item, `rightOrigin` = the native item):
yrs integrates those by item id, without walking. 10,000 entries: ~60 ms instead of ~550 ms.
(See encode_entry_chain for the clock layout that keeps tombstones of churned entries compact.)
"""
from __future__ import annotations

import bisect
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
TOMB_SIZE = 4096               # Yjs items of recently moved entries remembered (a late delete still wins)
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


def _read_var_int(buf: bytes, pos: int) -> tuple[int, int]:
    """lib0 readVarInt (sign in bit 6 of the first byte)."""
    r = buf[pos]
    pos += 1
    num = r & 0x3F
    neg = r & 0x40
    if r & 0x80:
        shift = 6
        while True:
            r = buf[pos]
            pos += 1
            num |= (r & 0x7F) << shift
            shift += 7
            if r < 0x80:
                break
    return (-num if neg else num), pos


def _skip_bytes(buf: bytes, pos: int) -> int:
    n, pos = read_var_uint(buf, pos)
    if pos + n > len(buf):
        raise IndexError("truncated")
    return pos + n


def _read_any(buf: bytes, pos: int) -> tuple[Any, int]:
    """lib0 readAny. Only strings are returned (what an entry id is); other values are skipped
    and returned as None."""
    t = buf[pos]
    pos += 1
    if t == 119:                                   # string
        n, pos = read_var_uint(buf, pos)
        if pos + n > len(buf):
            raise IndexError("truncated")
        return buf[pos:pos + n].decode("utf-8", "replace"), pos + n
    if t == 123 or t == 122:                       # float64, bigint64
        return None, pos + 8
    if t == 125:                                   # varInt
        return None, _read_var_int(buf, pos)[1]
    if t == 124:                                   # float32
        return None, pos + 4
    if 120 <= t <= 127:                            # true, false, null, undefined
        return None, pos
    if t == 118:                                   # object
        n, pos = read_var_uint(buf, pos)
        for _ in range(n):
            pos = _skip_bytes(buf, pos)
            pos = _read_any(buf, pos)[1]
        return None, pos
    if t == 117:                                   # array
        n, pos = read_var_uint(buf, pos)
        for _ in range(n):
            pos = _read_any(buf, pos)[1]
        return None, pos
    if t == 116:                                   # Uint8Array
        return None, _skip_bytes(buf, pos)
    raise ValueError(f"unknown lib0 value type {t}")


class UpdateScan:
    """What `scan_update` reads out of a Yjs v1 update without integrating it."""
    __slots__ = ("deletes", "ends", "ids")

    def __init__(self) -> None:
        self.ids: dict[str, list[tuple[int, int]]] = {}   # entry id -> Y.Map items whose "id" key is first set to it
        self.ends: dict[int, int] = {}                    # client -> end clock of its structs in the update
        self.deletes: list[tuple[int, int, int]] = []     # the delete set: (client, clock, length)

    def known(self) -> dict[int, int]:
        """A lower bound of the sender's state vector implied by the update alone: it had the items
        it sends, and every item its delete set covers (Yjs encodes deletions of items it holds;
        a client's items are integrated contiguously, so holding (c, k) means holding (c, < k))."""
        out = dict(self.ends)
        for client, clock, length in self.deletes:
            end = clock + length
            if end > out.get(client, 0):
                out[client] = end
        return out


def _var_uint(buf: bytes, pos: int) -> tuple[int, int]:
    """read_var_uint, unrolled for the common short encodings (item ids: 32-bit clients)."""
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    n = b & 0x7F
    b = buf[pos + 1]
    if b < 0x80:
        return n | b << 7, pos + 2
    n |= (b & 0x7F) << 7
    b = buf[pos + 2]
    if b < 0x80:
        return n | b << 14, pos + 3
    n |= (b & 0x7F) << 14
    b = buf[pos + 3]
    if b < 0x80:
        return n | b << 21, pos + 4
    n |= (b & 0x7F) << 21
    b = buf[pos + 4]
    if b < 0x80:
        return n | b << 28, pos + 5
    m, pos = read_var_uint(buf, pos + 4)
    return n | m << 28, pos


def scan_update(update: bytes, *, ids: bool = True) -> UpdateScan:
    """Decode a Yjs v1 update's structs and delete set (lib0 encoding, Yjs UpdateDecoderV1) far
    enough to know: which Y.Map items set an "id" key to which string (their first write of the key:
    parent given as an item id, parentSub "id", content Any), each client's end clock, and the delete
    set. Linear in the update's size; a malformed update raises ValueError."""
    out = UpdateScan()
    buf = update
    size = len(buf)
    vu = _var_uint
    found = out.ids
    try:
        n_clients, pos = vu(buf, 0)
        for _ in range(n_clients):
            n_structs, pos = vu(buf, pos)
            client, pos = vu(buf, pos)
            clock, pos = vu(buf, pos)
            for _ in range(n_structs):
                info = buf[pos]
                pos += 1
                ref = info & 0x1F
                if ref == 0 or ref == 10:                       # GC, Skip
                    length, pos = vu(buf, pos)
                    clock += length
                    continue
                parent_id = None
                id_key = False
                if info & 0xC0:
                    if info & 0x80:                             # origin
                        pos = vu(buf, vu(buf, pos)[1])[1]
                    if info & 0x40:                             # right origin
                        pos = vu(buf, vu(buf, pos)[1])[1]
                else:                                           # parent info
                    root = buf[pos]
                    pos += 1
                    if root == 1:
                        n, pos = vu(buf, pos)
                        pos += n
                    else:
                        pc, pos = vu(buf, pos)
                        pk, pos = vu(buf, pos)
                        parent_id = (pc, pk)
                    if info & 0x20:
                        n, pos = vu(buf, pos)
                        id_key = n == 2 and buf[pos:pos + 2] == b"id"
                        pos += n
                if ref == 8:                                    # ContentAny
                    length, pos = vu(buf, pos)
                    for i in range(length):
                        t = buf[pos]
                        if t == 119:                            # a string
                            n, pos = vu(buf, pos + 1)
                            if i == 0 and id_key and ids and parent_id is not None:
                                if pos + n > size:
                                    raise IndexError("truncated")
                                found.setdefault(buf[pos:pos + n].decode("utf-8", "replace"), []).append(parent_id)
                            pos += n
                        elif t == 123:                          # float64
                            pos += 9
                        else:
                            pos = _read_any(buf, pos)[1]
                elif ref == 7:                                  # ContentType
                    type_ref, pos = vu(buf, pos)
                    if type_ref == 3 or type_ref == 5:          # XmlElement, XmlHook: a name
                        pos = _skip_bytes(buf, pos)
                    length = 1
                elif ref == 1:                                  # ContentDeleted
                    length, pos = vu(buf, pos)
                elif ref == 4:                                  # ContentString: UTF-16 length
                    n, pos = vu(buf, pos)
                    if pos + n > size:
                        raise IndexError("truncated")
                    length = len(buf[pos:pos + n].decode("utf-8", "surrogatepass").encode("utf-16-le")) // 2
                    pos += n
                elif ref == 2:                                  # ContentJSON
                    length, pos = vu(buf, pos)
                    for _ in range(length):
                        pos = _skip_bytes(buf, pos)
                elif ref == 3 or ref == 5:                      # ContentBinary, ContentEmbed
                    pos = _skip_bytes(buf, pos)
                    length = 1
                elif ref == 6:                                  # ContentFormat
                    pos = _skip_bytes(buf, _skip_bytes(buf, pos))
                    length = 1
                elif ref == 9:                                  # ContentDoc
                    pos = _skip_bytes(buf, pos)
                    pos = _read_any(buf, pos)[1]
                    length = 1
                else:
                    raise ValueError(f"unknown Yjs content type {ref}")
                clock += length
            if pos > size:
                raise IndexError("truncated")
            if clock > out.ends.get(client, 0):
                out.ends[client] = clock
        if pos < size:
            n_clients, pos = vu(buf, pos)
            dels = out.deletes
            for _ in range(n_clients):
                client, pos = vu(buf, pos)
                n, pos = vu(buf, pos)
                for _ in range(n):
                    clock, pos = vu(buf, pos)
                    length, pos = vu(buf, pos)
                    dels.append((client, clock, length))
        if pos > size:
            raise IndexError("truncated")
    except IndexError:
        raise ValueError("truncated Yjs update") from None
    except RecursionError:
        raise ValueError("Yjs update nests values too deeply") from None
    return out


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
        # Y.Map items of entries that were moved away (deleted while the entry id lived on in another
        # copy): (client, clock) -> (entry id, [items of the copies that moves of it wrote]),
        # oldest first; per client, the sorted clocks. `tomb_log`: successors added by the entity
        # in the current command ([client, clock, s_client, s_clock]: it stores them in the record)
        self.tomb: OrderedDict[tuple[int, int], tuple[str, list[tuple[int, int]]]] = OrderedDict()
        self._tomb_clocks: dict[int, list[int]] = {}
        self.tomb_log: list[list[int]] = []
        self.actor: str | None = None                  # the user whose command is being applied
        self.gen = 0                                   # bumped by the entity per command
        self._updates: list[bytes] = []
        self.trash: list[Entry] = []                   # entries removed since the entity last cleared it
        self._local = False
        self._raw: list = []
        if update:
            self._load_mirror(rows, update)
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
    def _load_mirror(self, snap_rows: list | None = None, update: bytes | None = None) -> None:
        """Build the mirror of a freshly loaded document in one pass (to_json: no per-index walks;
        or the snapshot's rows when they match). Loaded state was validated when it was written,
        so JSON values are the stored values. Rows may carry the entry's Y.Map item id
        ([id, uri, added_by, added_at, client, clock]); without them, the item ids are read out of
        the document's update (scan_update)."""
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
                if len(r) == 6:
                    e.yid = (r[4], r[5])
            elif isinstance(r, dict):
                extra = set(r) - ENTRY_KEYSET or None
                e = Entry(r.get("id", MISSING), r.get("uri", MISSING), r.get("added_by", MISSING),
                          r.get("added_at", MISSING), extra=extra)
            else:
                e = Entry(None, None, None, None, is_map=False)
            entries.append(e)
            self._index_add(e)
        self.entries = entries
        if update and entries and all(e.yid is None for e in entries):     # rows without item ids
            self._attach_items(entries, [update])

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

    def item_of(self, e: Entry, pos: int | None = None) -> tuple[int, int]:
        """The Yjs item id of a live entry: known since it was inserted (or loaded), else looked up
        (a list walk) and remembered."""
        if e.yid is None:
            e.yid = self.item_id(self.positions([e])[0] if pos is None else pos)
        return e.yid

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

    def _attach_items(self, entries: list[Entry], updates: list[bytes]) -> None:
        """Give live entries their Y.Map item ids, read from the updates that inserted them: the
        item whose "id" key was set to the entry's id. An id claimed by several new items stays
        unknown (item_of looks it up when needed)."""
        want = [e for e in entries if e.alive and e.yid is None and isinstance(e.id, str)]
        if not want:
            return
        found: dict[str, list[tuple[int, int]]] = {}
        for u in updates:
            try:
                for k, v in scan_update(u).ids.items():
                    found.setdefault(k, []).extend(v)
            except ValueError:          # pragma: no cover - yrs wrote it; item ids stay unknown
                return
        count: dict[str, int] = {}
        for e in want:
            count[e.id] = count.get(e.id, 0) + 1
        for e in want:
            items = found.get(e.id)
            if items and len(items) == 1 and count[e.id] == 1:
                e.yid = items[0]

    def settle(self) -> None:
        """End of a command (or of a replayed record): remember the Y.Map items of entries that
        were moved away in it (deleted while a copy with the same id and content lives on) and
        that copy's item, so that a late delete of such an item can still be traced to its entry,
        and told apart from a client merely knowing the move."""
        trash = self.trash
        if not trash:
            return
        by_id = self.by_id
        for e in trash:
            item = e.yid
            if item is None or not isinstance(e.id, str):
                continue
            live = by_id.get(e.id)
            if live is None or live is e or not live.same_content(e):
                continue
            self.bury(item, e.id, [self.item_of(live)])

    def bury(self, item: tuple[int, int], entry_id: str, successors: list[tuple[int, int]]) -> None:
        tomb = self.tomb
        if item in tomb:
            return
        tomb[item] = (entry_id, successors)
        bisect.insort(self._tomb_clocks.setdefault(item[0], []), item[1])
        if len(tomb) > TOMB_SIZE:
            (client, clock), _ = tomb.popitem(last=False)
            clocks = self._tomb_clocks[client]
            del clocks[bisect.bisect_left(clocks, clock)]
            if not clocks:
                del self._tomb_clocks[client]

    def add_successor(self, item: tuple[int, int], successor: tuple[int, int]) -> None:
        """Another move of the moved-away `item` (a concurrent one) wrote the copy `successor`."""
        found = self.tomb.get(item)
        if found is not None and successor not in found[1]:
            found[1].append(successor)
            self.tomb_log.append([*item, *successor])

    def moved_items_in(self, deletes: Iterable[tuple[int, int, int]]) -> dict[str, list[tuple[int, int]]]:
        """Entries some of whose moved-away items lie in these delete ranges: {entry id: [those
        items]}. O(ranges * log(tomb) + hits)."""
        out: dict[str, list[tuple[int, int]]] = {}
        by_client = self._tomb_clocks
        if not by_client:
            return out
        tomb = self.tomb
        for client, clock, length in deletes:
            clocks = by_client.get(client)
            if not clocks:
                continue
            i = bisect.bisect_left(clocks, clock)
            end = clock + length
            while i < len(clocks) and clocks[i] < end:
                item = (client, clocks[i])
                out.setdefault(tomb[item][0], []).append(item)
                i += 1
        return out

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
        client, clock, left = _first_struct(self._updates[-1])
        last.yid = (client, clock)
        if len(entries) > 1:
            update = encode_entry_chain(client, clock + 5, left, (client, clock), entries[:-1])
            self._run(lambda txn: self.ydoc.apply_update(txn, update))
            for i, e in enumerate(entries[:-1]):
                e.yid = (client, clock + 5 + i)
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
        n_updates = len(self._updates)
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
            if change.inserted:
                # the transaction's own update: what was integrated (with any held-back structs)
                self._attach_items(change.inserted, self._updates[n_updates:])
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
