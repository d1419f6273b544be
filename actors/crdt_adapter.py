"""The one place that touches pycrdt's private layer (`pycrdt._pycrdt`, the yrs bindings) for the
playlist document (actors/playlist_doc.py): the document, its two roots and transactions, and the
observers' events translated into plain values, so nothing else depends on their shapes.

Why the private layer: the public wrappers open a transaction per call and turn every event value
into a Python wrapper; the playlist reads and writes in bulk inside one explicit transaction
(a 10,000-entry load, a 100-entry add) and reads event values lazily. The private layer's
signatures are not kept stable between releases (Doc's constructor has taken a client id alone;
it takes (client_id, skip_gc, guid) in 0.14), hence the pin in pyproject.toml: a newer pycrdt is
adopted by changing this module alone, once tests/test_playlist_*.py pass with it.

Schema (docs/playlist-document.md): root `tracks` (Y.Array of Y.Map), root `meta` (Y.Map).
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pycrdt
from pycrdt import _pycrdt as Y

LOCAL_ORIGIN = 0x5E17E5        # origin of the server's own transactions (observers skip them)
_UPDATE, _TRACKS, _META = 0, 1, 2


def _call(ref: weakref.ref[CrdtDoc], kind: int, ev) -> None:
    doc = ref()
    if doc is not None:            # a document being let go of reports nothing
        doc._event(kind, ev)


def merge_updates(updates: list[bytes]) -> bytes:
    """One Yjs v1 update equivalent to `updates` applied in order."""
    return updates[0] if len(updates) == 1 else pycrdt.merge_updates(*updates)


class CrdtDoc:
    """One yrs document with the playlist's roots. Transactions are explicit: `read()` and
    `write()` yield one for a block of calls (every method taking `txn` needs one)."""

    def __init__(self, client_id: int, update: bytes | None = None) -> None:
        self.doc = Y.Doc(client_id, None, None)
        txn = self.doc.create_transaction()
        try:
            self.tracks = self.doc.get_or_insert_array(txn, "tracks")
            self.meta = self.doc.get_or_insert_map(txn, "meta")
            if update:
                self.doc.apply_update(txn, update)
            txn.commit()
        finally:
            txn.drop()
        self._subs: list = []
        self._local = False            # in a local write(): the content observers stay silent

    # -- transactions ---------------------------------------------------------------------------------
    # Context managers as small classes, not @contextmanager generators: a remote update opens
    # three or four transactions, and the generator machinery was a measurable share of it.
    def read(self) -> _Read:
        """`with doc.read() as txn:` a transaction for reading (dropped at the end)."""
        return _Read(self.doc)

    def write(self, local: bool = True) -> _Write:
        """`with doc.write() as txn:` a committed transaction; `local`: the server's own (origin
        LOCAL_ORIGIN), which the content observers do not report (the caller mirrors its own
        edits, and reading the events' deltas would cost more than the edit)."""
        return _Write(self, local)

    def apply(self, txn, update: bytes) -> None:
        """Integrate a Yjs v1 update (a malformed one raises ValueError and changes nothing)."""
        self.doc.apply_update(txn, update)

    # -- observers ------------------------------------------------------------------------------------
    def observe(self, on_update: Callable[[bytes], None], on_tracks: Callable[[list], None],
                on_meta: Callable[[dict], None]) -> None:
        """on_update(the binary update of every committed transaction); on_tracks([change, ...]) per
        transaction (but a local write) that changed `tracks`: ("d", delta) for the array itself (delta: [{"retain": n}
        | {"delete": n} | {"insert": [value, ...]}], values read with `entry_fields`),
        ("k", index, {key: {"action", "oldValue"?, "newValue"?}}) for keys of the Y.Map at index,
        ("x", index) for anything nested deeper; on_meta({key: {...}}) for `meta`'s keys.

        The callbacks are held here, and the document's subscriptions (inside yrs, where Python's
        collector can't see) hold only a weak reference to this object: a subscription holding the
        callbacks themselves made a cycle through Rust (document -> callback -> the playlist's
        document object -> this -> document) that was never collected, so every playlist document an
        entity let go of (passivation, a lost lease, a reload) stayed in memory with its yrs heap
        (tests/test_crdt_adapter_release.py)."""
        self._on = (on_update, on_tracks, on_meta)
        me = weakref.ref(self)
        self._subs = [self.doc.observe(lambda ev: _call(me, _UPDATE, ev)),
                      self.tracks.observe_deep(lambda events: _call(me, _TRACKS, events)),
                      self.meta.observe(lambda ev: _call(me, _META, ev))]

    def _event(self, kind: int, ev) -> None:
        on_update, on_tracks, on_meta = self._on
        if kind == _UPDATE:
            on_update(ev.update)
        elif self._local:
            return
        elif kind == _META:
            on_meta(ev.keys)
        else:
            out = []
            for e in ev:
                path = e.path
                if not path:
                    out.append(("d", e.delta))
                elif len(path) == 1 and hasattr(e, "keys"):
                    out.append(("k", path[0], e.keys))
                else:
                    out.append(("x", path[0]))
            on_tracks(out)

    # -- reading ----------------------------------------------------------------------------------------
    def state_vector(self) -> bytes:
        txn = self.doc.create_transaction()
        try:
            return self.doc.get_state(txn)
        finally:
            txn.drop()

    def diff(self, state_vector: bytes | None = None) -> bytes:
        """What a peer at `state_vector` lacks (None: the whole document)."""
        txn = self.doc.create_transaction()
        try:
            return self.doc.get_update(txn, state_vector or b"\x00")
        finally:
            txn.drop()

    def roots(self) -> list[str]:
        with self.read() as txn:
            return list(self.doc.roots(txn))

    def tracks_len(self, txn) -> int:
        return self.tracks.len(txn)

    def tracks_json(self, txn) -> list:
        return orjson.loads(self.tracks.to_json(txn))

    def meta_items(self, txn) -> Iterator[tuple[str, Any]]:
        for k in self.meta.keys(txn):
            yield k, self.meta.get(txn, k)

    @staticmethod
    def entry_fields(txn, value) -> dict | None:
        """The keys and raw values of a Y.Map in `tracks` (None: the value is not a Y.Map)."""
        if not isinstance(value, Y.Map):
            return None
        return {k: value.get(txn, k) for k in value.keys(txn)}

    def item_id(self, pos: int) -> tuple[int, int]:
        """The Yjs item id (client, clock) of the value at `pos` of `tracks` (walks the list)."""
        with self.read() as txn:
            sticky = self.tracks.sticky_index(txn, pos, 0)
        item = orjson.loads(sticky.to_json_string())["item"]
        return item["client"], item["clock"]

    # -- writing (inside write()) ----------------------------------------------------------------------
    def insert_map(self, txn, index: int, fields: list[tuple[str, Any]]) -> None:
        m = self.tracks.insert_map_prelim(txn, index)
        for k, v in fields:
            m.insert(txn, k, v)

    def remove_range(self, txn, start: int, length: int) -> None:
        self.tracks.remove_range(txn, start, length)

    def set_entry(self, txn, pos: int, changes: dict[str, Any], remove: list[str]) -> None:
        m = self.tracks.get(txn, pos)
        for k, v in changes.items():
            m.insert(txn, k, v)
        for k in remove:
            m.remove(txn, k)

    def set_meta(self, txn, changes: dict[str, Any], remove: list[str]) -> None:
        for k, v in changes.items():
            self.meta.insert(txn, k, v)
        for k in remove:
            self.meta.remove(txn, k)


class _Read:
    __slots__ = ("doc", "txn")

    def __init__(self, doc) -> None:
        self.doc = doc

    def __enter__(self):
        self.txn = self.doc.create_transaction()
        return self.txn

    def __exit__(self, *exc) -> None:
        self.txn.drop()


class _Write:
    """A transaction committed on a clean exit (not after an exception), dropped either way."""
    __slots__ = ("crdt", "local", "txn")

    def __init__(self, crdt: CrdtDoc, local: bool) -> None:
        self.crdt = crdt
        self.local = local

    def __enter__(self):
        crdt = self.crdt
        doc = crdt.doc
        self.txn = doc.create_transaction_with_origin(LOCAL_ORIGIN) if self.local else doc.create_transaction()
        crdt._local = self.local
        return self.txn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.txn.commit()
        finally:
            self.txn.drop()
            self.crdt._local = False
