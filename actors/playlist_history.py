"""The playlist's versions and changes (actors/playlist.py): snapshot_ids, deltas, and the recent
history a stale snapshot_id is transformed through and `subscribe {since}` answers with.

snapshot_id (snapshot_id_of): opaque, changes with every version: base62(version << 48 | 48-bit
hash of the playlist id, version and the document's state vector).

Deltas (playlist.changed, subscribe, history): lists of ops, applied in order to the previous state:
    {"op": "delete", "index": i, "entry_ids": [...]}     (a run; deletes come first, descending)
    {"op": "insert", "index": i, "items": [{entry_id, uri, added_by, added_at}, ...]}
    {"op": "details", "changes": {name?, description?, public?, collaborative?}}
    {"op": "followers", "total": n}
    {"op": "collaborator", "user_id": u, "role": "editor" | "viewer" | None}
  A move (reorder, or a Yjs client's delete + insert of a copy) is a delete and an insert of the
  same entry id.

History

Items (version, snapshot_id, delta, weight), oldest first, at most HISTORY_VERSIONS of them and
HISTORY_WEIGHT entry references in all; `floor` is (version, snapshot_id) just before the first
item (None: nothing before this activation is known). Durable:
  log     every committed entry ends with {"t": "h", "v": version, "sid": snapshot_id, "d": delta}
          (`commit`), the delta compacted (`compact_delta`); replay rebuilds the items from them
          (`replay`). An entry without one (written before they existed) can't be transformed
          through: the history restarts after it (`close_gap`).
  snapshot  {"history": [[v, sid, delta], ...], "floor": [v, sid] | None} (`snapshot`, `restore`);
          snapshots without these keys restore an empty history with no floor (old snapshot_ids:
          CONFLICT).
Restored items name entry ids only: `since` answers with deltas only from what this activation
handled itself (`full_since`).
"""
from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from actors.playlist_entries import Entry
from actors.playlist_validate import bad
from protocols.errors import ErrorCode, SyncopateError
from protocols.uris import BASE62

HISTORY_VERSIONS = 128          # recent changes kept for snapshot_id transforms and resubscribes
HISTORY_WEIGHT = 20_000         # ... and at most this many entry references in them
_ID = attrgetter("id")


def _b62(n: int) -> str:
    out = []
    while True:
        n, r = divmod(n, 62)
        out.append(BASE62[r])
        if not n:
            return "".join(reversed(out))


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    """Sorted positions -> [(start, length)] ascending."""
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs


def delete_ops(removed: list[tuple[int, str]]) -> list[dict]:
    """[(old position, entry id)] -> delete runs, descending, each valid after the previous."""
    removed = sorted(removed)
    ids = dict(removed)
    return [{"op": "delete", "index": s, "entry_ids": [ids[p] for p in range(s, s + n)]}
            for s, n in reversed(_runs([p for p, _ in removed]))]


def insert_ops(added: list[tuple[int, Entry]]) -> list[dict]:
    """[(new position, entry)] -> insert runs, ascending."""
    added = sorted(added, key=lambda x: x[0])
    by = {p: e for p, e in added}
    return [{"op": "insert", "index": s, "items": [by[p].item() for p in range(s, s + n)]}
            for s, n in _runs([p for p, _ in added])]


def snapshot_id_of(entity_id: str, version: int, state_vector: bytes) -> str:
    h = hashlib.blake2b(state_vector + f"|{entity_id}|{version}".encode(), digest_size=6).digest()
    return _b62((version << 48) | int.from_bytes(h, "big"))


def compact_delta(delta: list[dict]) -> list[dict]:
    """A delta as the durable history keeps it: inserts name their entry ids only (what a
    snapshot_id transform needs), not the items."""
    return [{"op": "insert", "index": op["index"], "entry_ids": [x["entry_id"] for x in op["items"]]}
            if op["op"] == "insert" and "items" in op else op for op in delta]


class History:
    def __init__(self) -> None:
        self.items: deque = deque()          # (version, snapshot_id, delta, weight)
        self.weight = 0
        self.floor: tuple[int, str] | None = None   # (version, snapshot_id) before the first item
        self.full_since: int | None = None   # items after this version hold full deltas (items)
        self.unrecorded_at: int | None = None   # replaying an entry without an "h" record (older log)

    def __len__(self) -> int:
        return len(self.items)

    # -- recording ----------------------------------------------------------------------------------
    def record(self, version: int, sid: str, delta: list) -> None:
        w = 1 + sum(len(op.get("items") or op.get("entry_ids") or ()) for op in delta)
        self.items.append((version, sid, delta, w))
        self.weight += w
        while self.items and (len(self.items) > HISTORY_VERSIONS or self.weight > HISTORY_WEIGHT):
            ov, osid, _, ow = self.items.popleft()
            self.weight -= ow
            self.floor = (ov, osid)

    def commit(self, version: int, sid: str, delta: list) -> dict:
        """Record a committed change; the log record that makes it durable."""
        self.record(version, sid, delta)
        return {"t": "h", "v": version, "sid": sid, "d": compact_delta(delta)}

    def close_gap(self, version: int, sid: Callable[[], str]) -> None:
        """An entry replayed without a history record (written before they existed): the changes
        before it can't be transformed through it, so the history restarts after it."""
        if self.unrecorded_at is not None:
            self.unrecorded_at = None
            self.items.clear()
            self.weight = 0
            self.floor = (version, sid())

    def begin(self, version: int, sid: Callable[[], str]) -> None:
        """Before a command runs (the state is `version`, `sid()`)."""
        self.close_gap(version, sid)
        if self.floor is None:
            self.floor = (version, sid())
        if self.full_since is None:
            self.full_since = version

    def replay(self, record: Any, version: int, sid: Callable[[], str]) -> bool:
        """A replayed record, before the entity applies it: True when it is the history's own ("h")."""
        if record["t"] == "h":
            self.unrecorded_at = None
            self.record(record["v"], record["sid"], record["d"])
            return True
        if self.unrecorded_at is not None and self.unrecorded_at != version:
            self.close_gap(version, sid)          # the previous entry ended without one
        self.unrecorded_at = version
        self.full_since = None
        return False

    # -- reading ------------------------------------------------------------------------------------
    def view_at(self, snapshot_id: Any, current: str, entries: list) -> tuple[list, bool]:
        """The entries as of `snapshot_id`: (entries, True) when it is the current one (or None; the
        list must not be mutated), else (entry ids in that snapshot's order, False): the current
        order with the recent changes undone. Unknown or too old -> CONFLICT naming `current`."""
        if snapshot_id is None or snapshot_id == current:
            return entries, True
        if not isinstance(snapshot_id, str):
            raise bad("snapshot_id must be a string")
        items = list(self.items)
        idx = None
        for i in range(len(items) - 1, -1, -1):
            if items[i][1] == snapshot_id:
                idx = i
                break
        if idx is None and self.floor is not None and self.floor[1] == snapshot_id:
            idx = -1
        if idx is None:
            raise SyncopateError(ErrorCode.CONFLICT, f"snapshot_id {snapshot_id} is unknown or too old; "
                                 f"the current snapshot_id is {current}", snapshot_id=current)
        order = list(map(_ID, entries))
        for _, _, delta, _ in reversed(items[idx + 1:]):
            for step in reversed(delta):
                kind = step["op"]
                if kind == "insert":
                    del order[step["index"]:step["index"] + len(step.get("items") or step["entry_ids"])]
                elif kind == "delete":
                    order[step["index"]:step["index"]] = step["entry_ids"]
        return order, False

    def since(self, since: Any, version: int) -> list[dict] | None:
        """The deltas after version `since` ([{version, snapshot_id, delta}]), or None when they
        aren't all here with their items (the subscriber needs the full state)."""
        if not (isinstance(since, int) and not isinstance(since, bool) and since <= version):
            return None
        floor = self.floor[0] if self.floor is not None else version
        # restored history carries entry ids only (enough for transforms): app clients get
        # deltas from what this activation handled itself
        if since < max(floor, self.full_since if self.full_since is not None else version):
            return None
        return [{"version": v, "snapshot_id": s, "delta": d} for v, s, d, _ in self.items if v > since]

    # -- snapshot -----------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"history": [[v, sid, compact_delta(d)] for v, sid, d, _ in self.items],
                "floor": list(self.floor) if self.floor is not None else None}

    def restore(self, data: Any) -> None:
        self.items.clear()
        self.weight = 0
        # snapshots before the history was kept have none: old snapshot_ids are unknown (CONFLICT)
        floor = data.get("floor")
        self.floor = (floor[0], floor[1]) if floor else None
        for v, sid, d in data.get("history", ()):
            self.record(v, sid, d)
        self.full_since = None
        self.unrecorded_at = None
