"""Client-side replicas the scenarios keep, and the expected state they check the server against.

PlaylistReplica  an app client's copy of a playlist's entry order, built from its subscribe answer
                 and the `playlist.changed` deltas (actors/playlist.py documents both); a delta that
                 doesn't apply (a delete naming other entries than the replica holds there) counts
                 as an apply error: a lost or reordered push.
LibraryTracker   what each user's library must hold: per (user, uri), the last acknowledged save
                 or remove. Each (user, uri) is written by one task at a time, so the order of
                 acknowledgements is the order of application.
"""
from __future__ import annotations

from typing import Any

from simulations.client import ClientError, SimClient


class PlaylistReplica:
    def __init__(self, pid: str) -> None:
        self.pid = pid
        self.ids: list[str] = []
        self.uris: dict[str, str] = {}
        self.version = -1
        self.snapshot_id: str | None = None
        self.apply_errors = 0
        self.stale_pushes = 0
        self.pushes = 0
        self.loaded = False

    @property
    def entity(self) -> str:
        return f"playlist:{self.pid}"

    def load(self, answer: Any, version: int | None) -> None:
        """A subscribe answer (or a resync push): the full state, or the deltas since our version."""
        if not isinstance(answer, dict):
            return
        v = answer.get("version", version)
        if answer.get("mode") == "deltas":
            for d in answer.get("deltas") or ():
                self.apply(d.get("delta") or [], d.get("version"), d.get("snapshot_id"))
            self.snapshot_id = answer.get("snapshot_id", self.snapshot_id)
            if isinstance(v, int):
                self.version = max(self.version, v)
        else:
            items = answer.get("items") or []
            self.ids = [it.get("entry_id") or it.get("id") for it in items]
            self.uris = {(it.get("entry_id") or it.get("id")): it.get("uri") for it in items}
            self.snapshot_id = answer.get("snapshot_id")
            if isinstance(v, int):
                self.version = v
        self.loaded = True

    def on_push(self, msg: dict, t: float = 0.0) -> None:
        if msg.get("entity") != self.entity:
            return
        self.pushes += 1
        payload = msg.get("payload") or {}
        self.apply(payload.get("delta") or [], msg.get("version"), payload.get("snapshot_id"))

    def apply(self, delta: list, version: int | None, snapshot_id: str | None) -> None:
        if isinstance(version, int) and version <= self.version:
            self.stale_pushes += 1           # already have it (a resume overlap): not an error
            return
        for op in delta:
            kind = op.get("op")
            if kind == "delete":
                i, eids = op.get("index", 0), list(op.get("entry_ids") or ())
                if self.ids[i:i + len(eids)] != eids:
                    self.apply_errors += 1
                    drop = set(eids)            # best effort: keep going without them
                    self.ids = [x for x in self.ids if x not in drop]
                else:
                    del self.ids[i:i + len(eids)]
            elif kind == "insert":
                i, items = op.get("index", 0), op.get("items") or []
                new = [it.get("entry_id") or it.get("id") for it in items]
                if i > len(self.ids):
                    self.apply_errors += 1
                    i = len(self.ids)
                self.ids[i:i] = new
                for it in items:
                    self.uris[it.get("entry_id") or it.get("id")] = it.get("uri")
        if isinstance(version, int):
            self.version = version
        if snapshot_id is not None:
            self.snapshot_id = snapshot_id


async def read_playlist(c: SimClient, pid: str) -> tuple[list[tuple[str, str]], str | None, int | None]:
    """Every entry [(entry_id, uri)] of a playlist, in order, through `playlist.items` pages."""
    out: list[tuple[str, str]] = []
    offset, snap, version = 0, None, None
    while True:
        res = await c.call("playlist.items", {"id": pid, "offset": offset, "limit": 100}, mutate=False)
        body = res.payload or {}
        if snap is None:
            snap, version = body.get("snapshot_id"), res.version
        elif body.get("snapshot_id") != snap:        # changed while paging: start over
            out, offset, snap, version = [], 0, None, None
            continue
        items = body.get("items") or []
        out.extend(((it.get("entry_id") or it.get("id")), it.get("uri")) for it in items)
        offset += len(items)
        if not items or offset >= (body.get("total") or 0):
            return out, snap, version


class LibraryTracker:
    def __init__(self) -> None:
        self.expect: dict[tuple[str, str], tuple[bool, Any]] = {}     # (user, uri) -> (saved?, change id)
        self.uncertain: set[tuple[str, str]] = set()                  # a write that never got an answer

    def acked(self, user: str, uri: str, saved: bool, change_id: Any) -> None:
        self.expect[(user, uri)] = (saved, change_id)
        self.uncertain.discard((user, uri))

    def failed(self, user: str, uri: str) -> None:
        """The write may or may not have been applied (no answer): don't judge this item."""
        self.uncertain.add((user, uri))

    def users(self) -> set[str]:
        return {u for u, _ in self.expect}

    async def verify(self, client_of: dict[str, SimClient]) -> tuple[int, int, list, list]:
        """(checked, wrong, missing change ids, examples): read every tracked item back."""
        by_user: dict[str, list[str]] = {}
        for (u, uri) in self.expect:
            if (u, uri) not in self.uncertain:
                by_user.setdefault(u, []).append(uri)
        checked = wrong = 0
        missing, examples = [], []
        for u, uris in by_user.items():
            c = client_of[u]
            for i in range(0, len(uris), 50):
                part = uris[i:i + 50]
                try:
                    res = await c.call("library.contains", {"uris": part}, mutate=False)
                except ClientError as err:
                    examples.append(f"{u}: contains failed: {err.code}")
                    wrong += len(part)
                    continue
                got = res.payload if isinstance(res.payload, list) else []
                for uri, have in zip(part, got):
                    checked += 1
                    saved, cid = self.expect[(u, uri)]
                    if bool(have) != saved:
                        wrong += 1
                        missing.append(cid)
                        if len(examples) < 20:
                            examples.append(f"{u} {uri}: expected {'saved' if saved else 'removed'}")
        return checked, wrong, missing, examples
