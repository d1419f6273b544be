"""The session's part in user data rights (docs/data-rights.md). A mixin of SessionEntity
(actors/session.py).

- `playlist_role` (system, an effect of the playlist's set_collaborator / remove_collaborator):
  `{playlist_id, role: "editor" | "viewer" | null}`. The session keeps the index of playlists the
  user collaborates or collaborated on (record `["collab", v, playlist id, role | null]`; a removed
  role stays indexed as null, since the user's entries stay in the playlist), so an export and a
  deletion find them: the library only holds the playlists the user owns or follows.
- `export` (the user): everything the session holds, `{library: {type: [{id, uri, added_at}]},
  collaborating: [{playlist_id, role}], connections: [...], signed_out_devices: [{device_id,
  at}], version}`.
- `account_deleted` (system, the deletion's first step): every open connection gets
  `session.ended` (reason `account_deleted`) and is closed (`close`), every gateway following the
  session gets `session.changed` reason `account_deleted` (it refuses the user's tokens from then
  on and closes their other sockets); answers `{playlists, collaborating}`, the playlist ids the
  deletion must visit. Nothing is stored: the session is erased next.
"""
from __future__ import annotations

from actors.args import Args
from actors.entity import Command, Event, Outcome, op
from actors.library import TYPES
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import MessageType
from protocols.uris import make_uri

ROLES = ("editor", "viewer")
MAX_COLLAB = 10_000            # playlists a user collaborates on (the index; oldest dropped beyond)


class SessionRightsOps:
    @op("playlist_role", system=True)
    def _op_playlist_role(self, cmd: Command, args: Args) -> Outcome:
        pid = args.get("playlist_id")
        role = args.get("role")
        if not isinstance(pid, str) or not 0 < len(pid) <= 64:
            raise SyncopateError(ErrorCode.INVALID_FIELD, "playlist_id must be a playlist id")
        if role is not None and role not in ROLES:
            raise SyncopateError(ErrorCode.INVALID_FIELD, f"role must be one of {ROLES} or null")
        if pid in self.collab and self.collab[pid] == role:
            return Outcome(reply={"changed": False})
        rec = ["collab", self.version + 1, pid, role]
        self._apply(rec)
        return Outcome(reply={"changed": True}, records=[rec])

    def _apply_collab(self, rec: list) -> None:
        # a removed role stays indexed (role None): the user's entries may still be in the playlist
        _, _, pid, role = rec
        self.collab.pop(pid, None)
        self.collab[pid] = role
        while len(self.collab) > MAX_COLLAB:
            del self.collab[next(iter(self.collab))]

    @op("export", role="user")
    def _op_export(self, cmd: Command, args: Args) -> Outcome:
        lib = {kind: [{"id": i, "uri": make_uri(kind, i), "added_at": ts} for i, ts in self.library[kind].items()]
               for kind in TYPES}
        return Outcome(reply={"library": lib,
                              "collaborating": [{"playlist_id": p, "role": r} for p, r in self.collab.items()],
                              "connections": self._public_conns(None),
                              "signed_out_devices": [{"device_id": d, "at": at} for d, at in self.revoked.items()],
                              "version": self.version})

    @op("account_deleted", system=True)
    def _op_account_deleted(self, cmd: Command, args: Args) -> Outcome:
        events = [Event(type=MessageType.SESSION_CHANGED.value, payload={"reason": "account_deleted"}, to=self.id)]
        events += [Event(type=MessageType.SESSION_ENDED.value,
                         payload={"reason": "account_deleted", "device_id": info[0], "conn": str(c)},
                         to=f"conn:{c}", close=True)
                   for c, info in self.conns.items()]
        return Outcome(reply={"playlists": [i for i, _ in self.library["playlist"].items()],
                              "collaborating": list(self.collab)},
                       events=events)
