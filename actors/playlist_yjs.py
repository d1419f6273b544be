"""The playlist's Yjs sync ops: `yjs_sync` (a client's SyncStep1, answered with what it lacks and the
server's state vector) and `yjs_update` (a client's update: read first, applied, then corrected in
the same command by the merge policy, actors/playlist_merge.py). A mixin of PlaylistEntity
(actors/playlist.py); the binary reader is protocols/lib0.py's `scan_update`, the document
`self.doc` (actors/playlist_doc.py)."""
from __future__ import annotations

from actors.args import Args
from actors.entity import Command, Outcome, op
from actors.playlist_entries import Change, Entry, locate
from actors.playlist_history import delete_ops, insert_ops
from actors.playlist_merge import Correction
from actors.playlist_validate import META_KEYS, MISSING, bad
from protocols.errors import ErrorCode, SyncopateError
from protocols.lib0 import MalformedError, decode_state_vector, scan_update

PEER_STATES = 256               # Yjs connections whose last SyncStep1 state vector is remembered


class YjsOps:
    @op("yjs_sync", role="view")
    def _op_yjs_sync(self, cmd: Command, a: Args) -> Outcome:
        role = a.role
        sv = cmd.args.get("state_vector") or b"\x00"
        if not isinstance(sv, (bytes, bytearray)):
            raise bad("state_vector must be bytes")
        try:
            decode_state_vector(bytes(sv))
            update = self.doc.diff(bytes(sv))
        except (IndexError, ValueError):
            raise bad("state_vector is not a Yjs state vector", ErrorCode.BAD_REQUEST) from None
        if cmd.origin is not None and cmd.args.get("state_vector") is not None:
            # the client's SyncStep1: its SyncStep2 (the next update from this connection) is
            # computed from this state (see playlist_merge)
            self._peer_sv[cmd.origin] = bytes(sv)
            self._peer_sv.move_to_end(cmd.origin)
            if len(self._peer_sv) > PEER_STATES:
                self._peer_sv.popitem(last=False)
        return Outcome(reply={"update": update, "state_vector": self.doc.state_vector(),
                              "readonly": role not in ("owner", "editor", "system"),
                              "snapshot_id": self.snapshot_id(), "access": self.policy()})

    @op("yjs_update", role="edit")
    def _op_yjs_update(self, cmd: Command, a: Args) -> Outcome:
        role = a.role
        update = cmd.args.get("update")
        if not isinstance(update, (bytes, bytearray)) or not update:
            raise bad("update must be non-empty bytes")
        if len(update) > self.max_update_bytes:
            raise SyncopateError(ErrorCode.FRAME_TOO_LARGE, f"a Yjs update may hold {self.max_update_bytes} bytes")
        doc = self.doc
        update = bytes(update)
        before = list(doc.entries)
        meta_before = dict(doc.meta)
        # read first (bounded, linear): a malformed update is refused before yrs sees it
        try:
            scan = scan_update(update, structs=True)       # read once: apply_remote reuses it
        except MalformedError as exc:
            raise bad(f"not a Yjs update: {exc.message}", ErrorCode.BAD_REQUEST) from None
        # items of moved entries that this update deletes (already deleted here: see
        # playlist_merge.Correction.concurrent_deletes)
        moved = doc.moved_items_in(scan.deletes)
        try:
            change = doc.apply_remote(update, scan)
        except ValueError as exc:
            raise bad(f"not a Yjs update: {exc}", ErrorCode.BAD_REQUEST) from None
        mark = doc.mark()
        rejected = Correction(doc, user=cmd.principal.user_id, role=role, now_ms=cmd.now_ms, catalog=self.catalog,
                              max_entries=self.max_entries,
                              peer_sv=self._peer_sv.get(cmd.origin) if cmd.origin is not None else None
                              ).run(change, moved, scan)
        delta = self._net_delta(before, meta_before, change)
        correction = doc.since(mark)
        tracks_changed = any(op["op"] in ("insert", "delete") for op in delta)
        return self._commit(delta=delta, tracks_changed=tracks_changed,
                            reply={"update": correction, "rejected": rejected})

    def _net_delta(self, before: list[Entry], meta_before: dict, change: Change) -> list[dict]:
        """The command's net effect for app clients: deleted pre-existing entries, then surviving
        new ones (entries written and corrected in the same command never show)."""
        gone = self.doc.removed()
        removed = list(zip(locate(before, gone), (e.id for e in gone)))
        new = [e for e in change.inserted if e.alive]
        added = list(zip(self.doc.positions(new), new))
        delta = delete_ops(removed) + insert_ops(added)
        changes = {k: self.doc.meta.get(k) for k in META_KEYS
                   if self.doc.meta.get(k, MISSING) != meta_before.get(k, MISSING)}
        if changes:
            delta.append({"op": "details", "changes": changes})
        return delta
