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
(`scan_update`, protocols/lib0.py: a bounded, linear decoder of Yjs v1 updates, which also yields
an update's delete set).
The `tomb` (playlist_merge.MovedItems) remembers recently moved-away items (deleted while the
entry lived on as a copy) with their successors (the copies their moves wrote, and every later
copy), so that the merge policy can tell a late delete of a moved entry from a client merely
knowing the move (playlist_merge.Correction.concurrent_deletes).

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
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from actors.crdt_adapter import CrdtDoc, merge_updates
from actors.playlist_entries import Change, Entry, Written, locate, plain
from actors.playlist_merge import Foreign, MovedItems
from actors.playlist_validate import ENTRY_KEYS, ENTRY_KEYSET, META_KEYS, MISSING  # noqa: F401 - re-exported
from protocols.lib0 import (  # noqa: F401 - decode_state_vector, scan_update, UpdateScan: re-exported
    MalformedError,
    UpdateScan,
    decode_state_vector,
    encode_delete_update,
    encode_map_chain,
    first_struct,
    scan_update,
)

GRAVEYARD_SIZE = 4096          # recently deleted entries remembered (an undo re-inserts a copy)


# -- the Yjs binary codec: protocols/lib0.py ------------------------------------------------------------
def encode_entry_chain(client: int, clock: int, left: tuple[int, int] | None,
                       right: tuple[int, int], entries: list[Entry]) -> bytes:
    """A Yjs v1 update inserting `entries` (each a Y.Map of the four entry keys) in order between
    the item `left` (None = the start of the array) and the item `right`, as `client` from `clock`
    (lib0.encode_map_chain: the k Y.Map items take clocks clock .. clock+k-1 and their 4k key
    items follow, which keeps the tombstones of entries deleted together in one block)."""
    return encode_map_chain(client, clock, left, right,
                            [[("id", e.id), ("uri", e.uri), ("added_by", e.added_by),
                              ("added_at", float(e.added_at))] for e in entries])


def fresh_client_id(taken: Iterable[int] = ()) -> int:
    """A random 32-bit Yjs client id (as Yjs picks them) not present in `taken`."""
    taken = set(taken)
    while True:
        cid = secrets.randbits(32)
        if cid and cid not in taken:
            return cid


class PlaylistDoc:
    def __init__(self, update: bytes | None = None, client_id: int | None = None,
                 rows: list | None = None) -> None:
        """An empty document, or one loaded from a full update (a snapshot). The server's client id
        is random and never one the document already holds (a restarted server must not reuse a
        client id with lower clocks). `rows` ([[id, uri, added_by, added_at], ...], the mirror as
        snapshotted) spares reading the entries back out of the document."""
        self.client_id = client_id if client_id is not None else fresh_client_id()
        while True:
            self.crdt = CrdtDoc(self.client_id, update)
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
        self.tomb = MovedItems()                       # moved-away items and their successors
        self.foreign = Foreign()                       # Yjs items outside the schema
        # per command (begin .. finish): who applies it, its generation (entries it wrote carry it),
        # the updates it integrated, the entries it removed and inserted
        self.actor: str | None = None
        self.gen = 0
        self._updates: list[bytes] = []
        self.trash: list[Entry] = []
        self.added: list[Entry] = []
        self._raw: list = []
        if update:
            self._load_mirror(rows, update)
        self.crdt.observe(lambda u: self._updates.append(u), self._on_tracks, self._on_meta)

    # -- a command's bookkeeping -------------------------------------------------------------------
    def begin(self, actor: str | None) -> None:
        """Start a command (or a replayed record) applied by `actor` (None: the system)."""
        self.gen += 1
        self.actor = actor
        self.trash = []
        self.added = []
        self.tomb.log = []

    def mark(self) -> int:
        """A point in the current command's updates (see since)."""
        return len(self._updates)

    def since(self, mark: int) -> bytes:
        """The updates integrated after `mark`, merged into one (b"" if none)."""
        return merge_updates(self._updates[mark:]) if len(self._updates) > mark else b""

    def finish(self) -> Written:
        """End the command: remember its moved-away items (settle) and hand over what it wrote."""
        self.tomb.settle(self.added, self.trash, self.by_id, self.item_of)
        out = Written(self._updates, self.tomb.log)
        self._updates = []
        self.tomb.log = []
        return out

    def is_new(self, e: Entry) -> bool:
        """Written by the current command."""
        return e.gen == self.gen

    def removed(self) -> list[Entry]:
        """The entries the current command removed that existed before it."""
        return [e for e in self.trash if e.gen != self.gen]

    # -- snapshot ------------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The document's part of the entity's snapshot: its full update, the mirror's rows (with
        item ids), the graveyard, the moved-away items with their successors, the foreign items."""
        return {"doc": self.full_update(),
                "rows": [e.row() if e.yid is None else [*e.row(), *e.yid] for e in self.entries],
                "graveyard": [[*e.row(), who] for e, who in self.graveyard.values() if e.id not in self.by_id],
                "tomb": [[c, k, eid, [list(x) for x in succ]] for (c, k), (eid, succ) in self.tomb.items()],
                "foreign": [[c, a, b] for c, ranges in self.foreign.ranges.items() for a, b in ranges]}

    @classmethod
    def restore(cls, data: dict) -> PlaylistDoc:
        """A document from `snapshot()`'s keys (with a fresh server client id)."""
        doc = cls(data["doc"], rows=data.get("rows"))
        for eid, uri, by, at, who in data.get("graveyard", ()):
            doc.graveyard[eid] = (Entry(eid, uri, by, at), who)
        for client, clock, eid, succ in data.get("tomb", ()):
            doc.tomb.bury((client, clock), eid, [(c, k) for c, k in succ])
        if "foreign" in data:
            for c, a, b in data["foreign"]:
                doc.foreign.ranges.setdefault(c, []).append([a, b])
        else:       # a snapshot from before `foreign` was kept: read it off the document itself
            doc.foreign.classify(scan_update(data["doc"], structs=True))
        return doc

    # -- observers -------------------------------------------------------------------------------
    def _on_tracks(self, changes: list) -> None:
        self._raw.extend(changes)

    def _on_meta(self, keys: dict) -> None:
        self._raw.append(("m", keys))

    # -- reading ---------------------------------------------------------------------------------------
    def _load_mirror(self, snap_rows: list | None = None, update: bytes | None = None) -> None:
        """Build the mirror of a freshly loaded document in one pass (to_json: no per-index walks;
        or the snapshot's rows when they match). Loaded state was validated when it was written,
        so JSON values are the stored values. Rows may carry the entry's Y.Map item id
        ([id, uri, added_by, added_at, client, clock]); without them, the item ids are read out of
        the document's update (scan_update)."""
        crdt = self.crdt
        with crdt.read() as txn:
            if snap_rows is not None and len(snap_rows) == crdt.tracks_len(txn):
                rows = snap_rows
            else:
                rows = crdt.tracks_json(txn)
            for k, v in crdt.meta_items(txn):
                self.meta[k] = plain(v)
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
            self._attach_items(entries, [scan_update(update)])

    def _read_value(self, txn, value) -> Entry:
        fields = self.crdt.entry_fields(txn, value)
        if fields is None:
            return Entry(None, None, None, None, is_map=False, gen=self.gen)
        vals = dict.fromkeys(ENTRY_KEYS, MISSING)
        extra = None
        for k, v in fields.items():
            if k in ENTRY_KEYSET:
                vals[k] = plain(v)
            else:
                extra = extra or set()
                extra.add(k)
        return Entry(vals["id"], vals["uri"], vals["added_by"], vals["added_at"], extra=extra, gen=self.gen)

    def state_vector(self) -> bytes:
        return self.crdt.state_vector()

    def diff(self, state_vector: bytes | None = None) -> bytes:
        return self.crdt.diff(state_vector)

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
        return self.crdt.item_id(pos)

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

    def _attach_items(self, entries: list[Entry], scans: list[UpdateScan]) -> None:
        """Give live entries their Y.Map item ids, read from the updates that inserted them: the
        item whose "id" key was set to the entry's id. An id claimed by several new items stays
        unknown (item_of looks it up when needed)."""
        want = [e for e in entries if e.alive and e.yid is None and isinstance(e.id, str)]
        if not want:
            return
        found: dict[str, list[tuple[int, int]]] = {}
        for sc in scans:
            for k, v in sc.ids.items():
                found.setdefault(k, []).extend(v)
        count: dict[str, int] = {}
        for e in want:
            count[e.id] = count.get(e.id, 0) + 1
        ambiguous = []
        for e in want:
            items = found.get(e.id)
            if items and len(items) == 1 and count[e.id] == 1:
                e.yid = items[0]
            elif items:
                ambiguous.append(e)
        # several new copies of one id (concurrent moves in one update): looked up now, while they
        # all live - a correction may delete the losers next, and settle() needs every copy's item,
        # live and on replay alike
        if ambiguous:
            for e, p in zip(ambiguous, self.positions(ambiguous)):
                e.yid = self.item_id(p)

    def moved_items_in(self, deletes: Iterable[tuple[int, int, int]]) -> dict[str, list[tuple[int, int]]]:
        """Entries some of whose moved-away items lie in these delete ranges (MovedItems.items_in)."""
        return self.tomb.items_in(deletes)

    def add_successor(self, item: tuple[int, int], successor: tuple[int, int]) -> None:
        """Another move of the moved-away `item` (a concurrent one) wrote the copy `successor`."""
        self.tomb.add_successor(item, successor)

    def copies(self, entry_id: str) -> list[Entry]:
        first = self.by_id.get(entry_id)
        if first is None:
            return []
        return [first, *self.dups.get(entry_id, ())]

    # -- local (server) edits -------------------------------------------------------------------------
    def _run(self, fn) -> None:
        """A local (server) transaction: the observers do not report it (the edits mirror themselves)."""
        with self.crdt.write() as txn:
            fn(txn)

    def insert(self, index: int, entries: list[Entry]) -> None:
        """Insert well-formed entries at `index` (see the module docstring for the method)."""
        if not entries:
            return
        last = entries[-1]

        self._run(lambda txn: self.crdt.insert_map(txn, index, [
            ("id", last.id), ("uri", last.uri), ("added_by", last.added_by), ("added_at", float(last.added_at))]))
        client, clock, left = first_struct(self._updates[-1])
        last.yid = (client, clock)
        if len(entries) > 1:
            update = encode_entry_chain(client, clock + 5, left, (client, clock), entries[:-1])
            self._run(lambda txn: self.crdt.apply(txn, update))
            for i, e in enumerate(entries[:-1]):
                e.yid = (client, clock + 5 + i)
        self.entries[index:index] = entries
        self.added.extend(entries)
        for e in entries:
            e.alive = True
            e.gen = self.gen
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
                self.crdt.remove_range(txn, start, length)

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

        self._run(lambda txn: self.crdt.set_meta(txn, changes, remove))
        for k, v in changes.items():
            self.meta[k] = v
        for k in remove:
            self.meta.pop(k, None)

    def set_entry_fields(self, pos: int, changes: dict[str, Any], remove: Iterable[str] = ()) -> None:
        """Rewrite fields of the entry at `pos` (used to revert remote edits of existing entries)."""
        remove = list(remove)
        e = self.entries[pos]

        values = {k: float(v) if k == "added_at" else v for k, v in changes.items()}
        self._run(lambda txn: self.crdt.set_entry(txn, pos, values, remove))
        for k, v in changes.items():
            if k == "id" and v != e.id:
                self._index_rekey(e, v)
            else:
                setattr(e, k, v)
        for k in remove:
            if e.extra:
                e.extra.discard(k)

    def delete_items(self, ranges: list[tuple[int, int, int]]) -> None:
        """Delete these Yjs items, whatever they are (content outside the schema: see classify)."""
        if ranges:
            update = encode_delete_update(ranges)
            self._run(lambda txn: self.crdt.apply(txn, update))

    # -- remote updates ------------------------------------------------------------------------------
    def apply_remote(self, update: bytes, scan: UpdateScan | None = None) -> Change:
        """Apply a Yjs update from outside (a client, or a record on replay) and mirror it.
        A malformed update raises ValueError and changes nothing. `scan`: the caller's
        scan_update(update, structs=True), reused when yrs integrated exactly these bytes (the
        usual case: nothing already known, nothing held back), so the update is read once."""
        self._raw = []
        n_updates = len(self._updates)
        with self.crdt.write(local=False) as txn:
            self.crdt.apply(txn, update)
        change = Change()
        raw, self._raw = self._raw, []
        # the transaction's own updates: what was integrated (with any held-back structs released)
        integrated = self._updates[n_updates:]
        if scan is not None and len(integrated) == 1 and integrated[0] == update:
            scans = [scan]
        else:
            scans = []
            for u in integrated:
                try:
                    scans.append(scan_update(u, structs=True))
                except MalformedError:       # pragma: no cover - yrs wrote it
                    pass
        if raw:
            self._mirror(raw, change)
            if change.inserted:
                self._attach_items(change.inserted, scans)
        for sc in scans:
            change.foreign.extend(self.foreign.classify(sc))
        return change

    def _roots(self) -> list[str]:
        return self.crdt.roots()

    def _mirror(self, raw: list, change: Change) -> None:
        with self.crdt.read() as txn:
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
                            self.added.extend(new)
                            for e in new:
                                self._index_add(e)
                            change.inserted.extend(new)
                            pos += len(new)
                elif tag == "k":
                    e = self.entries[item[1]]
                    keys = {}
                    for k, d in item[2].items():
                        action = d.get("action")
                        old = plain(d.get("oldValue", MISSING)) if "oldValue" in d else MISSING
                        new = plain(d.get("newValue")) if action != "delete" else MISSING
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
                        old = plain(d["oldValue"]) if "oldValue" in d else MISSING
                        new = plain(d.get("newValue")) if action != "delete" else MISSING
                        prev = change.meta.get(k)
                        change.meta[k] = (action, prev[1] if prev else old, new)
                        if action == "delete":
                            self.meta.pop(k, None)
                        else:
                            self.meta[k] = new
