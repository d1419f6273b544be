"""A playlist forgets a deleted user (user data rights, docs/data-rights.md). A mixin of
PlaylistEntity (actors/playlist.py); system ops only, sent by the deletion (gateway/erasure.py).

  forget_user {user_id, anonymous_id} ->
    on someone else's playlist: {owned: false, rewritten: n, snapshot_id}
      - the user stops being a collaborator, follower and listener (no effect goes to their own
        entities: those are erased next);
      - every entry they added gets `added_by = anonymous_id`, written as an ordinary Yjs update of
        the entry's Y.Map by the server (the CRDT history stays valid for every Yjs client, which
        receives the update like any other edit; nothing stored is edited in place). The old
        values become deleted items, which the document's garbage collection drops from its
        encoded state: the snapshot no longer holds them (tests/test_data_rights.py);
      - the graveyard (who deleted what, for Yjs undo) and the snapshot_id history (whose deltas
        can name the user) are scrubbed: snapshot_ids from before are answered CONFLICT, as
        after a restart with an older log.
    on the user's own playlist: {owned: true, followers: [...], collaborators: [...]}
      - the playlist is retired: the owner, roles, followers and listeners are cleared, so it
        is NOT_FOUND for everyone from this entry on and the policy push ends every live
        subscription (gateway: protocols/access.py); the reply names the other users whose
        libraries still follow it (the deletion unfollows it there, then erases the playlist).
      A retired playlist answers forget_user with the same reply again (idempotent).

The log entries written before still name the user; the deletion compacts the playlist right
after (actors/maintenance.py COMPACT), so only the scrubbed snapshot remains in the store.

Records: {"t": "forget", "user": u, "anon": a} (replay scrubs the same way: roles, graveyard,
history) and {"t": "retire", "followers": [...], "collaborators": [...]}; the Yjs rewrite is an
ordinary {"t": "y"} record.
"""
from __future__ import annotations

from typing import Any

from actors.args import Args
from actors.entity import Command, Outcome, op
from actors.playlist_doc import Entry
from actors.playlist_history import delete_ops, insert_ops
from actors.playlist_validate import user_id_value
from protocols.errors import ErrorCode, SyncopateError

FORGET_RECORDS = ("forget", "retire")


class ForgetOps:
    @op("forget_user", system=True)
    def _op_forget_user(self, cmd: Command, a: Args) -> Outcome:
        user = user_id_value(cmd.args.get("user_id"), "user_id")
        anon = user_id_value(cmd.args.get("anonymous_id"), "anonymous_id")
        if anon == user:
            raise SyncopateError(ErrorCode.INVALID_FIELD, "anonymous_id must differ from user_id")
        if self.retired is not None:
            return Outcome(reply={"owned": True, **self.retired})
        self._exists()
        if self.owner == user:
            rec = {"t": "retire", "followers": sorted(self.followers - {user}),
                   "collaborators": sorted(set(self.collaborators) - {user})}
            self._apply_forget(rec)
            out = self._commit(records=[rec], delta=[], tracks_changed=False, event=False)
            out.reply = {"owned": True, **self.retired}
            return out
        mentioned = (user in self.collaborators or user in self.followers or user in self.listeners
                     or any(e.added_by == user for e in self.doc.entries)
                     or any(who == user or e.added_by == user for e, who in self.doc.graveyard.values())
                     or self._history_names(user))
        if not mentioned:
            return Outcome(reply={"owned": False, "rewritten": 0, "snapshot_id": self.snapshot_id()})
        rec = {"t": "forget", "user": user, "anon": anon}
        self._apply_forget(rec)
        delta: list = []
        rewritten = 0
        for pos, e in enumerate(self.doc.entries):
            if e.added_by == user:
                # a server edit of the entry's Y.Map: the same Yjs update every client integrates
                self.doc.set_entry_fields(pos, {"added_by": anon})
                delta += delete_ops([(pos, e.id)]) + insert_ops([(pos, e)])
                rewritten += 1
        out = self._commit(records=[rec], delta=delta, tracks_changed=False,
                           reply={"owned": False, "rewritten": rewritten})
        return out

    def _history_names(self, user: str) -> bool:
        needle = repr(user)
        return any(needle in repr(d) for _, _, d, _ in self._history.items)

    def _apply_forget(self, rec: dict) -> None:
        if rec["t"] == "retire":
            self.retired = {"followers": list(rec["followers"]), "collaborators": list(rec["collaborators"])}
            self.owner = None
            self.collaborators.clear()
            self.followers.clear()
            self.listeners.clear()
            return
        user, anon = rec["user"], rec["anon"]
        self.collaborators.pop(user, None)
        self.followers.discard(user)
        self.listeners.discard(user)
        grave = self.doc.graveyard
        for eid, (e, who) in list(grave.items()):
            if e.added_by == user or who == user:
                grave[eid] = (Entry(e.id, e.uri, anon if e.added_by == user else e.added_by, e.added_at),
                              anon if who == user else who)
        h = self._history
        h.items.clear()
        h.weight = 0
        h.floor = (self.version, self.snapshot_id())

    def _retired_state(self) -> dict[str, Any]:
        return {"retired": self.retired} if self.retired is not None else {}
