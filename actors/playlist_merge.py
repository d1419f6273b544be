"""The playlist's merge policy: what the server corrects in a Yjs client's update, applied in the
same command (actors/playlist.py, op yjs_update; docs/playlist-document.md, "How the server
validates Yjs edits" and "Concurrent moves and deletes").

- meta: unknown keys removed, deleted keys restored, invalid values and a non-owner's change of
  `public` / `collaborative` reverted;
- existing entries are immutable: edits of their keys reverted;
- new entries validated (shape, id, uri, catalog, added_by, added_at; a copy of an existing id must
  have its content; a copy of a deleted entry is accepted only from its deleter, an undo), and one
  entry per id kept: the copy with the greatest Yjs item id (concurrent moves);
- a delete of a moved-away item by a client that had not seen the move deletes the live copy too
  (a delete concurrent with a move wins in both arrival orders);
- over the entry limit, the update's new entries are refused whole;
- content outside the schema is deleted.

The bookkeeping this relies on is kept with the document (actors/playlist_doc.py: the mirror, the
graveyard of deleted entries) and defined here: the moved-away items and their successors
(MovedItems) and the items outside the schema (Foreign), which PlaylistDoc keeps up to date in
every command and on replay.
"""
from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from actors.playlist_validate import META_KEYS, MISSING, OWNER_META, entry_problem, meta_problem
from protocols.errors import ErrorCode
from protocols.lib0 import ROOT, UpdateScan, decode_state_vector

if TYPE_CHECKING:
    from actors.playlist_doc import PlaylistDoc
    from actors.playlist_entries import Change, Entry

TOMB_SIZE = 4096               # Yjs items of recently moved entries remembered (a late delete still wins)


class Correction:
    """One client update's check: who sent it (`user`, with `role` "owner" | "editor" | "system"),
    when (`now_ms`), the state vector of its SyncStep1 on that connection (`peer_sv`, or None),
    and the limits. `run` corrects the document in place (PlaylistDoc's local edits)."""

    def __init__(self, doc: PlaylistDoc, *, user: str | None, role: str, now_ms: int, catalog, max_entries: int,
                 peer_sv: bytes | None = None) -> None:
        self.doc = doc
        self.user = user
        self.role = role
        self.now_ms = now_ms
        self.catalog = catalog
        self.max_entries = max_entries
        self.peer_sv = peer_sv

    def run(self, change: Change, moved: dict[str, list[tuple[int, int]]] | None = None,
            scan: UpdateScan | None = None) -> list[dict]:
        """Validate what a client's update changed and undo what is invalid (see the module doc);
        returns the refusals ([{code, message}]). `moved`: entries some of whose moved-away items
        the update deletes (see concurrent_deletes); `scan`: the update, as scan_update read it."""
        role = self.role
        doc = self.doc
        rejected: list[dict] = []

        def reject(code, message):
            rejected.append({"code": code.value if isinstance(code, ErrorCode) else code, "message": message})

        # -- meta: revert invalid or forbidden changes --------------------------------------------
        if change.meta:
            restore, drop = {}, []
            for k, (action, old, new) in change.meta.items():
                if k not in META_KEYS:
                    if action != "delete":
                        drop.append(k)
                        reject(ErrorCode.INVALID_FIELD, f"unknown meta key {k!r}")
                    continue
                problem = "meta keys may not be deleted" if action == "delete" else meta_problem(k, new)
                if problem is None and k in OWNER_META and role not in ("owner", "system"):
                    problem = f"only the owner changes {k}"
                    code = ErrorCode.FORBIDDEN
                else:
                    code = ErrorCode.INVALID_FIELD
                if problem is not None:
                    reject(code, problem)
                    if old is MISSING or meta_problem(k, old) is not None:
                        drop.append(k)
                    else:
                        restore[k] = old
            doc.set_meta(restore, drop)
        # -- edits of existing entries: entries are immutable -------------------------------------
        for e, keys in change.edited:
            if not e.alive:
                continue
            restore, drop = {}, []
            for k, (action, old, new) in keys.items():
                if old is MISSING:
                    drop.append(k)
                else:
                    restore[k] = old
            if restore or drop:
                reject(ErrorCode.FORBIDDEN, f"entry {restore.get('id', e.id)} is immutable")
                doc.set_entry_fields(doc.positions([e])[0], restore, drop)
        # -- new entries ---------------------------------------------------------------------------
        new = [e for e in change.inserted if e.alive]
        net_new, bad_entries = self.check_new(new, change, reject) if new else ([], set())
        # -- a delete of a moved entry, concurrent with the move: the delete wins -------------------
        if moved:
            # ids this update copies validly (moves, even if another copy is kept): not deletes;
            # the copies are further successors of the moved-away items the update deletes
            copied: dict[str, list[Entry]] = {}
            for e in new:
                if id(e) not in bad_entries and e.id in moved:
                    copied.setdefault(e.id, []).append(e)
            for eid, copies in copied.items():
                for item in moved[eid]:
                    for c in copies:
                        if c.yid is not None:
                            doc.add_successor(item, c.yid)
            if scan is not None:
                # copies the update writes that yrs holds back (they wait for missing items): a move
                for eid in scan.ids.keys() & moved.keys():
                    if not any(e.id == eid for e in new):
                        copied[eid] = []
            victims = self.concurrent_deletes(moved, scan, copied)
            if victims:
                doc.delete_positions(doc.positions(victims))
        # -- the limit: refuse the update's new entries whole ----------------------------------------
        if new and len(doc.entries) > self.max_entries:
            over = [e for e in net_new if e.alive]
            reject(ErrorCode.LIMIT_EXCEEDED, f"a playlist holds at most {self.max_entries} items; "
                   f"{len(over)} new entries refused")
            doc.delete_positions(doc.positions(over))
        self.junk(change, reject)
        return rejected

    def check_new(self, new: list[Entry], change: Change, reject) -> tuple[list[Entry], set[int]]:
        """Validate the update's new entries (deleting invalid ones) and keep one copy per id.
        Returns the entries that are new to the playlist (not copies of existing ones) and the
        (python) ids of the invalid ones."""
        doc = self.doc
        deleted_now = {e.id: e for e in change.deleted if isinstance(e.id, str) and e.well_shaped()}
        new_set = {id(e) for e in new}
        fresh: dict[str, Entry] = {}        # valid brand-new ids of this update
        bad_entries: list[Entry] = []
        net_new: list[Entry] = []
        user = None if self.role == "system" else self.user
        for e in new:
            template, resurrect = None, False
            if isinstance(e.id, str):
                template = next((c for c in doc.copies(e.id) if id(c) not in new_set), None) \
                    or deleted_now.get(e.id) or fresh.get(e.id)
                resurrect = template is None and e.id in doc.graveyard
                if resurrect:
                    template, deleter = doc.graveyard[e.id]
                    if user is not None and deleter != user:
                        # a copy of an entry someone else deleted: a move concurrent with the
                        # delete (delete wins); the deleter's own undo is accepted
                        reject(ErrorCode.CONFLICT, f"entry {e.id} was deleted by another user")
                        bad_entries.append(e)
                        continue
            problem = entry_problem(e, user_id=user, now_ms=self.now_ms, catalog=self.catalog, template=template)
            if problem is not None:
                reject(problem[0], problem[1])
                bad_entries.append(e)
            elif template is None:
                fresh[e.id] = e
                net_new.append(e)
            elif resurrect:
                net_new.append(e)
        if bad_entries:
            doc.delete_positions(doc.positions(bad_entries))
        # -- one entry per id: keep the copy with the greatest Yjs item id --------------------------
        losers: list[Entry] = []
        for eid in {e.id for e in new if e.alive}:
            copies = doc.copies(eid)
            if len(copies) > 1:
                ranked = sorted(((doc.item_of(c, p), c) for p, c in zip(doc.positions(copies), copies)),
                                key=lambda x: x[0])
                losers.extend(c for _, c in ranked[:-1])
        if losers:
            doc.delete_positions(doc.positions(losers))
        return net_new, {id(e) for e in bad_entries}

    def concurrent_deletes(self, moved: dict[str, list[tuple[int, int]]], scan: UpdateScan | None,
                           copied: dict[str, list[Entry]]) -> list[Entry]:
        """The live copies that a client's update deletes without knowing it.

        Yjs has no move: a move deletes the entry's Y.Map item and inserts a copy. A client that
        deletes the entry without having seen the move deletes the old item, which is already
        deleted here: in Yjs terms a no-op, and the copy would survive. The document remembers
        every moved-away item with its successors, the items of the copies its moves wrote and of
        every later copy (PlaylistDoc.tomb, settle). For an entry X one of whose moved-away items
        the update's delete set covers:

        - the update also inserts a valid copy of X: a move (concurrent moves keep one copy);
        - the sender held a successor of that item (its item id is below the sender's
          state: the state vector of its SyncStep1 on this connection, merged with what the update
          itself implies): it saw that move and merely knows the old item is gone (a SyncStep2
          carries the client's whole delete set, and a client repeats the deletes of its own moves);
        - otherwise the sender deleted X without having seen the move, concurrently: the delete
          wins, and X's live copy (wherever later moves took it) is deleted too - the same outcome
          as when the delete arrives before the move (whose copy is then refused, CONFLICT).
        """
        doc = self.doc
        known: dict[int, int] | None = None
        victims: list[Entry] = []
        for eid, items in moved.items():
            if eid in copied:
                continue
            live = doc.by_id.get(eid)
            if live is None or doc.is_new(live):
                continue
            if known is None:
                known = scan.known() if scan is not None else {}
                sv = self.peer_sv
                if sv:
                    for client, clock in decode_state_vector(sv).items():
                        if clock > known.get(client, 0):
                            known[client] = clock
            # explained when, for each moved-away item it deletes, the sender held a copy one of
            # that item's moves wrote
            if all(any(k < known.get(c, 0) for c, k in doc.tomb[item][1]) for item in items):
                continue
            victims.append(live)
        return victims

    def junk(self, change: Change, reject) -> None:
        """Content outside the schema (another root's, keys on `tracks`, a sequence in `meta`, and
        what nests in or chains off it) is deleted in the same correction: a Yjs root can't be
        removed, but its items can. Refusing the update instead would not converge: Yjs has no
        acknowledgements, so every later update of that client would wait for the refused clocks."""
        if change.foreign:
            self.doc.delete_items(change.foreign)
            reject(ErrorCode.INVALID_FIELD, "content outside the playlist schema (only the roots "
                   "`tracks` and `meta`) was deleted")


class MovedItems(OrderedDict):
    """The Y.Map items of entries that were moved away (deleted while the entry id lived on in
    another copy), oldest first, the last TOMB_SIZE: (client, clock) -> (entry id, [successors]),
    the successors being the items of the copies its moves wrote and of every later copy of the
    entry (settle). Indexed per client (sorted clocks: items_in) and per entry id. `log`: the
    successors that moves added in the current command ([client, clock, s_client, s_clock]: the
    entity stores them in the record; replay re-adds them)."""

    def __init__(self) -> None:
        super().__init__()
        self._clocks: dict[int, list[int]] = {}
        self._ids: dict[str, list[tuple[int, int]]] = {}
        self.log: list[list[int]] = []

    def settle(self, added: list[Entry], trash: list[Entry], by_id: dict[str, Entry], item_of) -> None:
        """End of a command (or of a replayed record): remember the Y.Map items of entries that
        were moved away in it (deleted while a copy with the same id and content lives on), with
        the copies of the entry written in it, so that a late delete of such an item can still be
        traced to its entry, and told apart from a client merely knowing the move.

        Every copy of an entry written later is a successor of its moved-away items too, whichever
        command brings it: a client's copy does not always arrive with the delete of the item it
        moved (yrs holds an update back until what it depends on arrives, and integrates it with a
        later one; one update may carry several clients' moves). Its author holds the copy, so its
        later SyncStep2 - whose delete set shows that item deleted - is not taken for a delete.
        Derived from the document alone, so replay rebuilds the same successors."""
        tomb_ids = self._ids
        if not trash and not tomb_ids:
            return
        gone = {e.id for e in trash if isinstance(e.id, str)}
        copies: dict[str, list[tuple[int, int]]] = {}     # entry id -> items of its valid copies written now
        for e in added:
            if e.yid is None or not (e.id in tomb_ids or e.id in gone):
                continue
            live = by_id.get(e.id)
            if live is not None and live.same_content(e) and e.well_shaped():
                copies.setdefault(e.id, []).append(e.yid)
        if copies and tomb_ids:
            for eid, items in copies.items():
                for item in tomb_ids.get(eid, ()):
                    succ = self[item][1]
                    succ.extend(c for c in items if c not in succ)
        for e in trash:
            item = e.yid
            if item is None or not isinstance(e.id, str):
                continue
            live = by_id.get(e.id)
            if live is None or live is e or not live.same_content(e):
                continue
            first = item_of(live)
            self.bury(item, e.id, [first, *(c for c in copies.get(e.id, ()) if c != first and c != item)])

    def bury(self, item: tuple[int, int], entry_id: str, successors: list[tuple[int, int]]) -> None:
        if item in self:
            return
        self[item] = (entry_id, successors)
        bisect.insort(self._clocks.setdefault(item[0], []), item[1])
        self._ids.setdefault(entry_id, []).append(item)
        if len(self) > TOMB_SIZE:
            (client, clock), (eid, _) = self.popitem(last=False)
            clocks = self._clocks[client]
            del clocks[bisect.bisect_left(clocks, clock)]
            if not clocks:
                del self._clocks[client]
            items = self._ids[eid]
            items.remove((client, clock))
            if not items:
                del self._ids[eid]

    def add_successor(self, item: tuple[int, int], successor: tuple[int, int]) -> None:
        """Another move of the moved-away `item` (a concurrent one) wrote the copy `successor`."""
        found = self.get(item)
        if found is not None and successor not in found[1]:
            found[1].append(successor)
            self.log.append([*item, *successor])

    def items_in(self, deletes: Iterable[tuple[int, int, int]]) -> dict[str, list[tuple[int, int]]]:
        """Entries some of whose moved-away items lie in these delete ranges: {entry id: [those
        items]}. O(ranges * log(tomb) + hits)."""
        out: dict[str, list[tuple[int, int]]] = {}
        by_client = self._clocks
        if not by_client:
            return out
        tomb = self
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


class Foreign:
    """The Yjs items outside the playlist's schema seen so far (content the corrections delete)."""

    def __init__(self) -> None:
        self.ranges: dict[int, list[list[int]]] = {}      # client -> sorted [[start, end), ...]

    def classify(self, scan: UpdateScan) -> list[tuple[int, int, int]]:
        """Items of an integrated update that lie outside the schema - in a root other than `tracks`
        (as a sequence) and `meta` (as keys), or nested in such an item, or placed next to one
        (an item without parent info shares its origin's, or right origin's, parent) - are added to
        `ranges`; returns those that are not deleted already.

        `ranges` (client -> sorted [start, end) clock ranges) remembers them for good (snapshot, and
        rebuilt the same way on replay): a later item chained to a deleted foreign item is foreign too."""
        structs = scan.structs
        if not structs:
            return []
        index: dict[int, tuple[list[int], list[int]]] = {}
        for i, st in enumerate(structs):
            starts = index.setdefault(st[0], ([], []))
            starts[0].append(st[1])
            starts[1].append(i)
        verdict: list[bool | None] = [None] * len(structs)
        foreign = self.ranges

        def lookup(item: tuple[int, int]):
            """(index of the update's struct holding item, None) or (None, known verdict)."""
            c, k = item
            got = index.get(c)
            if got is not None:
                j = bisect.bisect_right(got[0], k) - 1
                if j >= 0:
                    st = structs[got[1][j]]
                    if k < st[1] + st[2]:
                        return got[1][j], None
            ranges = foreign.get(c)
            if ranges:
                j = bisect.bisect_right(ranges, [k, float("inf")]) - 1
                if j >= 0 and k < ranges[j][1]:
                    return None, True
            return None, False                    # outside the update and not foreign: the schema's

        for i in range(len(structs)):
            # follow the chain of references iteratively (a chain may be thousands long)
            chain = []
            j = i
            result = None
            seen = set()
            while result is None:
                if verdict[j] is not None:
                    result = verdict[j]
                    break
                if j in seen:                     # a reference cycle: yrs never integrates it
                    result = False
                    break
                seen.add(j)
                chain.append(j)
                how, ref = structs[j][3], structs[j][4]
                if how == ROOT:
                    name, sub = ref
                    result = not ((name == "tracks" and not sub) or (name == "meta" and sub))
                    break
                nxt, known = lookup(ref)
                if nxt is None:
                    result = known
                    break
                j = nxt
            for j in chain:
                verdict[j] = result
        out = []
        added = False
        for st, bad in zip(structs, verdict):
            if bad:
                foreign.setdefault(st[0], []).append([st[1], st[1] + st[2]])
                added = True
                if not st[5]:
                    out.append((st[0], st[1], st[2]))
        if added:
            for c, ranges in foreign.items():
                ranges.sort()
                merged = [ranges[0]]
                for r in ranges[1:]:
                    if r[0] <= merged[-1][1]:
                        merged[-1][1] = max(merged[-1][1], r[1])
                    else:
                        merged.append(r)
                foreign[c] = merged
        return out
