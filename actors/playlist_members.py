"""The playlist's people: followers (with the follower's library), collaborators (the owner's to
set) and listeners (device groups playing it, which get `context_changed` on every edit). A mixin of
PlaylistEntity (actors/playlist.py), whose helpers (`_commit`, `_view`, `_user`, ...) it uses; the
ops are in the playlist's op table (docs/playlist-document.md)."""
from __future__ import annotations

from actors.args import Args
from actors.entity import SYSTEM, Command, Outcome, Principal, op
from actors.playlist_validate import ROLES, bad, user_id_value
from protocols.errors import ErrorCode
from protocols.messages import DEVICE_GROUP, SESSION


class MemberOps:
    @op("follow")
    def _op_follow(self, cmd: Command, a: Args) -> Outcome:
        user = self._user(cmd)
        self._view(Principal(user_id=user))
        return self._following(user, True)

    @op("unfollow")
    def _op_unfollow(self, cmd: Command, a: Args) -> Outcome:
        user = self._user(cmd)
        self._exists()
        if user not in self.followers:
            self._view(Principal(user_id=user))
        return self._following(user, False)

    def _following(self, user: str, on: bool) -> Outcome:
        """`user` follows (on) or no longer follows the playlist: a record, and the follower's
        library hears it (an effect); nothing when it already is so."""
        if (user in self.followers) == on:
            return Outcome(reply={"snapshot_id": self.snapshot_id(), "followers": len(self.followers)})
        (self.followers.add if on else self.followers.discard)(user)
        out = self._commit(records=[{"t": "follow", "user": user, "on": on}],
                           delta=[{"op": "followers", "total": len(self.followers)}], tracks_changed=False,
                           reply={"followers": len(self.followers)})
        out.effects.append(Command(kind=SESSION, entity_id=user,
                                   op="library_follow_playlist" if on else "library_unfollow_playlist",
                                   args={"playlist_id": self.id}, principal=SYSTEM))
        return out

    @op("collaborators", role="owner")
    def _op_collaborators(self, cmd: Command, a: Args) -> Outcome:
        return Outcome(reply={"owner": self.owner, "collaborators": [
            {"user_id": u, "role": r} for u, r in sorted(self.collaborators.items())]})

    @op("set_collaborator", role="owner")
    def _op_set_collaborator(self, cmd: Command, a: Args) -> Outcome:
        user = user_id_value(cmd.args.get("user_id"))
        role = cmd.args.get("role")
        if role not in ROLES:
            raise bad(f"role must be one of {', '.join(ROLES)}")
        if user == self.owner:
            raise bad("the owner cannot be a collaborator", ErrorCode.BAD_REQUEST)
        if self.collaborators.get(user) == role:
            return self._commit(delta=[], tracks_changed=False)
        self.collaborators[user] = role
        out = self._commit(records=[{"t": "collab", "user": user, "role": role}],
                           delta=[{"op": "collaborator", "user_id": user, "role": role}], tracks_changed=False)
        out.effects.append(self._role_effect(user, role))
        return out

    @op("remove_collaborator", role="owner")
    def _op_remove_collaborator(self, cmd: Command, a: Args) -> Outcome:
        user = user_id_value(cmd.args.get("user_id"))
        if user not in self.collaborators:
            return self._commit(delta=[], tracks_changed=False)
        del self.collaborators[user]
        out = self._commit(records=[{"t": "collab", "user": user, "role": None}],
                           delta=[{"op": "collaborator", "user_id": user, "role": None}], tracks_changed=False)
        out.effects.append(self._role_effect(user, None))
        return out

    def _role_effect(self, user: str, role: str | None) -> Command:
        """The collaborator's session indexes the playlists they collaborate on (data export and
        deletion find them there: actors/session_rights.py)."""
        return Command(kind=SESSION, entity_id=user, op="playlist_role", principal=SYSTEM,
                       args={"playlist_id": self.id, "role": role})

    @op("add_listener", system=True)
    def _op_add_listener(self, cmd: Command, a: Args) -> Outcome:
        self._exists()
        user = user_id_value(cmd.args.get("user_id"))
        seen = cmd.args.get("snapshot_id")
        # The device group read the entries at `seen`; edits made since then never reached it.
        catch_up = [Command(kind=DEVICE_GROUP, entity_id=user, op="context_changed", principal=SYSTEM,
                            args={"context_uri": self.uri, "entries": self.entry_rows(),
                                  "snapshot_id": self.snapshot_id()})] \
            if isinstance(seen, str) and seen != self.snapshot_id() else []
        if user in self.listeners:
            return Outcome(reply={"ok": True}, effects=catch_up)
        self.listeners.add(user)
        out = self._commit(records=[{"t": "listen", "user": user, "on": True}], delta=[],
                           tracks_changed=False, event=False, reply={"ok": True})
        out.effects.extend(catch_up)
        return out

    @op("remove_listener", system=True)
    def _op_remove_listener(self, cmd: Command, a: Args) -> Outcome:
        user = user_id_value(cmd.args.get("user_id"))
        if user not in self.listeners:
            return Outcome(reply={"ok": True})
        self.listeners.discard(user)
        return self._commit(records=[{"t": "listen", "user": user, "on": False}], delta=[],
                            tracks_changed=False, event=False, reply={"ok": True})
