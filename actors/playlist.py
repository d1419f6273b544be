"""The playlist entity: a pycrdt document (Yjs-compatible) plus owner, roles, followers, listeners.

State
  doc            actors/playlist_doc.PlaylistDoc: the CRDT document (`meta` Y.Map, `tracks` Y.Array of
                 Y.Map, docs/playlist-document.md) and its Python mirror (entries, by_id, meta)
  owner          user id; collaborators {user_id: "editor" | "viewer"}; followers {user_id};
  listeners      user ids whose device group plays this playlist (sent context_changed effects)

Records (one log entry per command = the list of these)
  {"t": "y", "u": [update, ...], "by": u}  Yjs updates exactly as integrated (a client's update, then
                                          the server's corrections; or the server's own edits), and
                                          the user they came from (who deleted what, for undo);
                                          "m": [[c, k, sc, sk], ...] when a client's move also moved
                                          the already moved-away item (c, k): its copy (sc, sk)
  {"t": "create", "owner": u, "at": ms}
  {"t": "collab", "user": u, "role": "editor" | "viewer" | None}
  {"t": "follow", "user": u, "on": bool}
  {"t": "listen", "user": u, "on": bool}
Replay applies Yjs updates as remote updates (the mirror follows through observers); nothing is
re-authored, so item ids survive restarts and a client's old copy merges without duplicates.
Snapshot = the document's full update + the metadata; restore loads it into a fresh document
whose server client id is new and random (never one already in the document).

Ops (cmd.args; replies; every mutation answers at least {"snapshot_id"}):
  create {name, description?, public?=true, collaborative?=false}      -> playlist object (as get)
  get {}                                   -> {id, type, uri, name, description, public, collaborative,
                                               owner {id, type, uri}, followers {total}, snapshot_id,
                                               tracks {total}, items {total}, version}
  update_details {name?, description?, public?, collaborative?}        -> {snapshot_id}
  items {offset?=0, limit?=100 (1..100)}   -> {total, snapshot_id, offset, limit,
                                               items: [{entry_id, uri, added_by, added_at}]}
  add {uris (1..100), position?}           -> {snapshot_id}
  reorder {range_start, insert_before, range_length?=1, snapshot_id?}  -> {snapshot_id}
  replace {uris (0..100)}                  -> {snapshot_id}
  remove {tracks | items: [{uri, positions?} | uri], snapshot_id?}      -> {snapshot_id}
  follow {} / unfollow {}                  -> {snapshot_id, followers}
  collaborators {}                         -> {owner, collaborators: [{user_id, role}]}     (owner only)
  set_collaborator {user_id, role}         -> {snapshot_id}                                (owner only)
  remove_collaborator {user_id}            -> {snapshot_id}                                (owner only)
  subscribe {since?}                       -> {mode: "deltas", version, snapshot_id, deltas: [{version,
                                               snapshot_id, delta}]} or {mode: "full", version,
                                               snapshot_id, playlist: <get>, items: [...all entries]}
  yjs_sync {state_vector?}                 -> {update (what the client lacks: SyncStep2), state_vector
                                               (the server's: for its SyncStep1), readonly, snapshot_id}
                                              (a client's SyncStep1: its state vector is remembered for
                                               that connection, cmd.origin, until its next one)
  yjs_update {update}                      -> {update (the server's correction, b"" if none),
                                               snapshot_id, rejected: [{code, message}]}
  entries {}                               -> {entries: [[entry_id, uri], ...], snapshot_id}
  add_listener {user_id} / remove_listener {user_id}                   (system only) -> {ok}

Event (every mutation): playlist.changed {snapshot_id, total, delta: [op, ...], update: bytes|None}
  (delta ops: actors/playlist_history.py)

Roles: a private playlist is NOT_FOUND for everyone but its owner and collaborators. The owner and
editors edit tracks, name and description; only the owner changes public, collaborative and
collaborators (FORBIDDEN). System principals may do everything.

Yjs validation (yjs_update): viewers and non-editors are refused whole (FORBIDDEN, nothing applied).
An editor's update is applied, then checked in the same command; what is invalid is corrected by a
server update in the same log entry: invalid new entries are deleted (wrong shape or types, bad id,
malformed or unknown uri, added_by not the writer on a new id, copies of an id with other content),
edits of existing entries are reverted (entries are immutable), forbidden or invalid `meta` changes
are reverted, and when the entries would exceed 10,000 every new entry of the update is deleted
(refused whole). Duplicate ids (concurrent moves) keep the copy with the greatest Yjs item id
(client, clock). A copy of an entry that is no longer there is accepted only from the user who
deleted it (a Yjs undo); from anyone else it is a move concurrent with a delete, and the delete
wins (CONFLICT in `rejected`). In the other arrival order - the move (a Yjs client's, or a REST
reorder) first - the delete reaches only the old, already deleted Y.Map item; when the sender had
not seen the move (it held no copy written by or after the move: its SyncStep1 state vector on
that connection and the update itself tell), the entry's live copy is deleted too, in the same
correction: the delete wins in both orders (actors/playlist_merge.py). Records and events carry
update + correction; the sender's reply carries the correction, so every replica converges on the
valid document.
"""
from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from typing import Any


from actors.args import Args, Bool, Int, int_arg
from actors.crdt_adapter import merge_updates
from actors.entity import SYSTEM, Command, Entity, Env, Event, OpSpec, Outcome, Principal, op
from actors.playlist_doc import (
    META_KEYS,
    MISSING,
    Change,
    Entry,
    PlaylistDoc,
    MalformedError,
    decode_state_vector,
    locate,
    scan_update,
)
from actors.playlist_forget import FORGET_RECORDS, ForgetOps
from actors.playlist_history import History, delete_ops, insert_ops, snapshot_id_of
from actors.playlist_merge import Correction
from actors.playlist_validate import (
    MAX_ENTRIES,
    MAX_PAGE,
    OWNER_META,
    ROLES,
    bad,
    description_value,
    name_value,
    uri_list,
    user_id_value,
)
from protocols.access import NONE, access
from protocols.access import policy as access_policy
from protocols.access import role as access_role
from protocols.errors import ErrorCode, SyncopateError
from protocols.limits import MAX_FRAME_BYTES
from protocols.messages import DEVICE_GROUP, PLAYLIST, SESSION, MessageType
from catalog import require
from protocols.uris import make_uri, parse_uri

CHANGED = MessageType.PLAYLIST_CHANGED.value
ACCESS = MessageType.PLAYLIST_ACCESS.value
MAX_UPDATE_BYTES = MAX_FRAME_BYTES       # what the gateway's frames can carry (protocols/limits.py)
PEER_STATES = 256               # Yjs connections whose last SyncStep1 state vector is remembered


class PlaylistEntity(ForgetOps, Entity):
    kind = PLAYLIST
    snapshot_every = 200      # a 10k-entry snapshot is ~1.2 MB: compact often enough to keep replay short

    def __init__(self, entity_id: str, env: Env) -> None:
        super().__init__(entity_id, env)
        self.doc = PlaylistDoc()
        self.owner: str | None = None
        self.created_at = 0
        self.collaborators: dict[str, str] = {}
        self.followers: set[str] = set()
        self.listeners: set[str] = set()
        self.retired: dict | None = None      # the owner's account was deleted (actors/playlist_forget.py)
        self._history = History()             # snapshot_id transforms, subscribe {since} (playlist_history)
        # origin (gateway, connection) -> the state vector of that Yjs client's last SyncStep1: what
        # it held when it computed its SyncStep2 (not persisted: a restarted host resyncs sockets)
        self._peer_sv: OrderedDict[Any, bytes] = OrderedDict()
        cfg = env.config if env is not None else {}
        self.max_entries = int(cfg.get("playlist_max_entries", MAX_ENTRIES))
        self.max_update_bytes = int(cfg.get("playlist_max_update_bytes", MAX_UPDATE_BYTES))

    # ==========================================================================================
    # helpers
    # ==========================================================================================
    @property
    def catalog(self):
        return self.env.catalog if self.env is not None else None

    @property
    def uri(self) -> str:
        return make_uri("playlist", self.id)

    def snapshot_id(self, version: int | None = None) -> str:
        """Opaque, changes with every version (playlist_history.snapshot_id_of)."""
        return snapshot_id_of(self.id, self.version if version is None else version, self.doc.state_vector())

    def policy(self) -> dict:
        """Who may do what (protocols/access.py): the shared rule's input, as sent to gateways."""
        meta = self.doc.meta
        return access_policy(self.owner, meta.get("public") is True, meta.get("collaborative") is True,
                             self.collaborators)

    def role(self, p: Principal) -> str | None:
        if p.system:
            return "system"
        return access_role(self.policy(), p.user_id)

    def _exists(self) -> None:
        if self.owner is None:
            raise SyncopateError(ErrorCode.NOT_FOUND, f"no playlist {self.id}")

    def _view(self, p: Principal) -> str | None:
        self._exists()
        if p.system:
            return "system"
        pol = self.policy()
        if access(pol, p.user_id) == NONE:
            raise SyncopateError(ErrorCode.NOT_FOUND, f"no playlist {self.id}")
        return access_role(pol, p.user_id)

    def _edit(self, p: Principal) -> str:
        r = self._view(p)
        if r not in ("owner", "editor", "system"):
            raise SyncopateError(ErrorCode.FORBIDDEN, "only the owner and editors edit this playlist")
        return r

    def _owner_only(self, p: Principal) -> str:
        r = self._view(p)
        if r not in ("owner", "system"):
            raise SyncopateError(ErrorCode.FORBIDDEN, "only the playlist's owner may do this")
        return r

    def _user(self, cmd: Command, key: str = "user_id") -> str:
        if cmd.principal.system:
            return user_id_value(cmd.args.get(key), key)
        return cmd.principal.user_id

    def playlist_object(self) -> dict:
        meta = self.doc.meta
        n = len(self.doc.entries)
        return {"id": self.id, "type": "playlist", "uri": self.uri,
                "name": meta.get("name", ""), "description": meta.get("description", ""),
                "public": bool(meta.get("public", False)), "collaborative": bool(meta.get("collaborative", False)),
                "owner": {"id": self.owner, "type": "user", "uri": make_uri("user", self.owner or "")},
                "followers": {"href": None, "total": len(self.followers)},
                "snapshot_id": self.snapshot_id(), "tracks": {"total": n}, "items": {"total": n},
                "version": self.version}

    def entry_rows(self) -> list[list[str]]:
        return [[e.id, e.uri] for e in self.doc.entries]

    def _new_entries(self, uris: list[str], user: str, now_ms: int) -> list[Entry]:
        """Entries with fresh 16-character ids: 12 characters of a hash of (playlist, server client
        id, version) - unique per command - and the index within the command in 4 hex digits."""
        v = self.version + 1
        salt = 0
        while True:
            h = hashlib.blake2b(f"{self.id}:{self.doc.client_id}:{v}:{salt}".encode(), digest_size=9).digest()
            prefix = base64.urlsafe_b64encode(h).decode()
            ids = [f"{prefix}{i:04x}" for i in range(len(uris))]
            if not any(i in self.doc.by_id for i in ids):
                break
            salt += 1
        return [Entry(i, u, user, now_ms) for i, u in zip(ids, uris)]

    # ==========================================================================================
    # commit: records, event, history, effects
    # ==========================================================================================
    def _commit(self, *, records: list | None = None, delta: list, tracks_changed: bool,
                reply: dict | None = None, event: bool = True) -> Outcome:
        written = self.doc.finish()
        updates = written.updates
        records = list(records or ())
        if updates:
            rec = {"t": "y", "u": updates, "by": self.doc.actor}
            if written.moves:
                rec["m"] = written.moves           # moves of already moved-away items (playlist_merge)
            records.append(rec)
        if not records:
            out = {"snapshot_id": self.snapshot_id()}
            out.update(reply or {})
            return Outcome(reply=out)
        v = self.version + 1
        sid = self.snapshot_id(v)
        # the history behind snapshot_id transforms, durable: replay rebuilds it (see apply)
        records.append(self._history.commit(v, sid, delta))
        out = {"snapshot_id": sid}
        out.update(reply or {})
        events, effects = [], []
        if event:
            merged = merge_updates(updates) if updates else None
            events.append(Event(type=CHANGED, payload={"snapshot_id": sid, "total": len(self.doc.entries),
                                                      "delta": delta, "update": merged}))
        if tracks_changed and self.listeners:
            rows = self.entry_rows()
            for u in sorted(self.listeners):
                effects.append(Command(kind=DEVICE_GROUP, entity_id=u, op="context_changed", principal=SYSTEM,
                                       args={"context_uri": self.uri, "entries": rows, "snapshot_id": sid}))
        return Outcome(reply=out, records=records, events=events, effects=effects)

    def _view_at(self, snapshot_id: Any) -> tuple[list, bool]:
        """The entries as of `snapshot_id` (History.view_at): (self.doc.entries, True) when current,
        else (entry ids in that snapshot's order, False); unknown or too old -> CONFLICT."""
        if snapshot_id is None:
            return self.doc.entries, True
        return self._history.view_at(snapshot_id, self.snapshot_id(), self.doc.entries)

    def _conflict(self, what: str) -> SyncopateError:
        current = self.snapshot_id()
        return SyncopateError(ErrorCode.CONFLICT, f"{what}; the current snapshot_id is {current}",
                              snapshot_id=current)

    # ==========================================================================================
    # dispatch
    # ==========================================================================================
    # Entity.handle: the op table is the @op declarations below (docs/playlist-document.md)
    def authorize(self, cmd: Command, spec: OpSpec) -> str | None:
        """The op's role: "view" (NOT_FOUND for whom a private playlist is hidden), "edit" (owner and
        editors), "owner"; the answer is the sender's role. Follow checks the user it follows for."""
        check = {"view": self._view, "edit": self._edit, "owner": self._owner_only}.get(spec.role)
        return check(cmd.principal) if check is not None else None

    def run(self, spec: OpSpec, cmd: Command, a: Args) -> Outcome:
        self._history.begin(self.version, self.snapshot_id)
        self.doc.begin(None if cmd.principal.system else cmd.principal.user_id)
        before = self.policy()
        out = spec.fn(self, cmd, a)
        if out.records:
            after = self.policy()
            if after != before:
                # live connections re-check their access (gateway: protocols/access.py)
                out.events.append(Event(type=ACCESS, payload=after))
        return out

    # -- create / read -----------------------------------------------------------------------------
    @op("create", args={"public": Bool(), "collaborative": Bool()})
    def _op_create(self, cmd: Command, a: Args) -> Outcome:
        if self.owner is not None:
            raise SyncopateError(ErrorCode.CONFLICT, f"playlist {self.id} already exists")
        owner = user_id_value(a.get("owner"), "owner") if cmd.principal.system else cmd.principal.user_id
        name = name_value(a.get("name"))
        desc = description_value(a.get("description"))
        public, collab = a["public"], a["collaborative"]
        meta = {"name": name, "description": desc, "public": True if public is None else public,
                "collaborative": bool(collab)}
        self.doc.set_meta(meta)
        self.owner, self.created_at = owner, cmd.now_ms
        out = self._commit(records=[{"t": "create", "owner": owner, "at": cmd.now_ms}],
                           delta=[{"op": "details", "changes": meta}], tracks_changed=False)
        out.reply = self.playlist_object()
        out.reply["snapshot_id"] = self.snapshot_id(self.version + 1)
        out.reply["version"] = self.version + 1
        out.effects.append(Command(kind=SESSION, entity_id=owner, op="playlist_created",
                                   args={"playlist_id": self.id}, principal=SYSTEM))
        return out

    @op("get", role="view")
    def _op_get(self, cmd: Command, a: Args) -> Outcome:
        return Outcome(reply=self.playlist_object())

    @op("items", role="view", args={"offset": Int(lo=0, default=0), "limit": Int(lo=1, hi=MAX_PAGE, default=MAX_PAGE)})
    def _op_items(self, cmd: Command, a: Args) -> Outcome:
        offset, limit = a["offset"], a["limit"]
        ents = self.doc.entries
        return Outcome(reply={"total": len(ents), "snapshot_id": self.snapshot_id(), "offset": offset,
                              "limit": limit, "items": [e.item() for e in ents[offset:offset + limit]]})

    @op("entries", role="view")
    def _op_entries(self, cmd: Command, a: Args) -> Outcome:
        return Outcome(reply={"entries": self.entry_rows(), "snapshot_id": self.snapshot_id()})

    @op("subscribe", role="view")
    def _op_subscribe(self, cmd: Command, a: Args) -> Outcome:
        since = cmd.args.get("since")
        base = {"version": self.version, "snapshot_id": self.snapshot_id(), "access": self.policy()}
        deltas = self._history.since(since, self.version)
        if deltas is not None:
            return Outcome(reply={"mode": "deltas", **base, "deltas": deltas})
        return Outcome(reply={"mode": "full", **base, "playlist": self.playlist_object(),
                              "items": [e.item() for e in self.doc.entries]})

    @op("unsubscribe")
    def _op_unsubscribe(self, cmd: Command, a: Args) -> Outcome:
        return Outcome(reply=None)

    # -- details -----------------------------------------------------------------------------------
    @op("update_details", role="edit", args={"public": Bool(), "collaborative": Bool()})
    def _op_update_details(self, cmd: Command, a: Args) -> Outcome:
        role = a.role
        changes: dict[str, Any] = {}
        if a.get("name") is not None:
            changes["name"] = name_value(a["name"])
        if "description" in a and a["description"] is not None:
            changes["description"] = description_value(a["description"])
        for k in ("public", "collaborative"):
            v = a[k]
            if v is not None:
                changes[k] = v
        changes = {k: v for k, v in changes.items() if self.doc.meta.get(k, MISSING) != v}
        if OWNER_META & changes.keys() and role not in ("owner", "system"):
            raise SyncopateError(ErrorCode.FORBIDDEN, "only the owner changes public and collaborative")
        self.doc.set_meta(changes)
        return self._commit(delta=[{"op": "details", "changes": changes}] if changes else [],
                            tracks_changed=False)

    # -- tracks ------------------------------------------------------------------------------------
    def _check_uris(self, uris: list[str]) -> None:
        for u in uris:
            require(self.catalog, u)

    @op("add", role="edit")
    def _op_add(self, cmd: Command, a: Args) -> Outcome:
        uris = uri_list(cmd.args)
        n = len(self.doc.entries)
        pos = int_arg(a, "position", default=n, lo=0, hi=n)
        self._check_uris(uris)
        if n + len(uris) > self.max_entries:
            raise SyncopateError(ErrorCode.LIMIT_EXCEEDED, f"a playlist holds at most {self.max_entries} items; "
                                 f"it has {n} and {len(uris)} would be added")
        ents = self._new_entries(uris, cmd.principal.user_id, cmd.now_ms)
        self.doc.insert(pos, ents)
        return self._commit(delta=insert_ops([(pos + i, e) for i, e in enumerate(ents)]), tracks_changed=True)

    @op("replace", role="edit")
    def _op_replace(self, cmd: Command, a: Args) -> Outcome:
        uris = uri_list(cmd.args, allow_empty=True)
        self._check_uris(uris)
        if len(uris) > self.max_entries:
            raise SyncopateError(ErrorCode.LIMIT_EXCEEDED, f"a playlist holds at most {self.max_entries} items")
        old = list(enumerate(e.id for e in self.doc.entries))
        self.doc.delete_positions(range(len(old)))
        ents = self._new_entries(uris, cmd.principal.user_id, cmd.now_ms)
        self.doc.insert(0, ents)
        return self._commit(delta=delete_ops(old) + insert_ops(list(enumerate(ents))),
                            tracks_changed=bool(old or ents))

    @op("reorder", role="edit")
    def _op_reorder(self, cmd: Command, a: Args) -> Outcome:
        for k in ("range_start", "insert_before"):
            if a.get(k) is None:
                raise bad(f"{k} is required")
        seq, current = self._view_at(a.get("snapshot_id"))
        n = len(seq)
        if n == 0:
            raise bad("the playlist is empty", ErrorCode.BAD_REQUEST)
        start = int_arg(a, "range_start", default=0, lo=0, hi=n - 1)
        length = int_arg(a, "range_length", default=1, lo=1, hi=n - start)
        before = int_arg(a, "insert_before", default=0, lo=0, hi=n)
        if start <= before <= start + length:
            return self._commit(delta=[], tracks_changed=False)       # nothing moves
        by_id = self.doc.by_id
        hints = list(range(start, start + length))
        if current:
            moved = seq[start:start + length]
            anchor, anchor_hint = (seq[before], before) if before < n else (None, n)
        else:
            moved = [by_id.get(i) for i in seq[start:start + length]]
            if any(e is None for e in moved):
                raise self._conflict("entries in that range were removed since that snapshot")
            anchor, anchor_hint = None, n
            moved_set = set(seq[start:start + length])
            for j in range(before, n):      # the entry to insert before (or the next one still there)
                cand = by_id.get(seq[j])
                if cand is not None and seq[j] not in moved_set:
                    anchor, anchor_hint = cand, j
                    break
        ps = self.doc.positions(moved + ([anchor] if anchor else []), hints + [anchor_hint])
        anchor_pos = ps.pop() if anchor else len(self.doc.entries)
        target = anchor_pos - sum(1 for p in ps if p < anchor_pos)
        ps_sorted = sorted(ps)
        if ps_sorted[-1] - ps_sorted[0] == len(ps) - 1 and ps_sorted[0] == target:
            return self._commit(delta=[], tracks_changed=False)
        removed = [(p, self.doc.entries[p].id) for p in ps]
        self.doc.delete_positions(ps)
        copies = [e.copy() for e in moved]
        self.doc.insert(target, copies)
        return self._commit(delta=delete_ops(removed) + insert_ops([(target + i, e) for i, e in enumerate(copies)]),
                            tracks_changed=True)

    @op("remove", role="edit")
    def _op_remove(self, cmd: Command, a: Args) -> Outcome:
        spec = a.get("tracks") if a.get("tracks") is not None else a.get("items")
        if not isinstance(spec, list) or not spec:
            raise bad("tracks must be a non-empty list of {uri, positions?}")
        if len(spec) > 100:
            raise bad("at most 100 tracks per request", ErrorCode.BAD_REQUEST)
        everywhere: set[str] = set()
        positional: list[tuple[str, list[int]]] = []
        for t in spec:
            if isinstance(t, str):
                t = {"uri": t}
            if not isinstance(t, dict) or not isinstance(t.get("uri"), str):
                raise bad("each track must be {uri, positions?}")
            parse_uri(t["uri"])
            pos = t.get("positions")
            if pos is None:
                everywhere.add(t["uri"])
            elif not isinstance(pos, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in pos):
                raise bad("positions must be a list of integers")
            else:
                positional.append((t["uri"], pos))
        targets: dict[int, tuple[Entry, int]] = {}       # id(entry) -> (entry, position or hint)
        if positional:
            seq, current = self._view_at(a.get("snapshot_id"))
            by_id = self.doc.by_id
            for uri, pos in positional:
                for p in pos:
                    if not 0 <= p < len(seq):
                        raise bad(f"position {p} is out of range (0..{len(seq) - 1})", ErrorCode.BAD_REQUEST)
                    e = seq[p] if current else by_id.get(seq[p])
                    if e is None:
                        raise self._conflict(f"the entry at position {p} of that snapshot was removed")
                    if e.uri != uri:
                        raise bad(f"position {p} holds {e.uri}, not {uri}", ErrorCode.BAD_REQUEST)
                    targets[id(e)] = (e, p)
        if everywhere:
            for i, e in enumerate(self.doc.entries):
                if e.uri in everywhere:
                    targets[id(e)] = (e, i)
        if not targets:
            return self._commit(delta=[], tracks_changed=False)
        ents = [e for e, _ in targets.values()]
        ps = self.doc.positions(ents, [h for _, h in targets.values()])
        removed = [(p, e.id) for p, e in zip(ps, ents)]
        self.doc.delete_positions(ps)
        return self._commit(delta=delete_ops(removed), tracks_changed=True)

    # -- followers, collaborators, listeners ---------------------------------------------------------
    @op("follow")
    def _op_follow(self, cmd: Command, a: Args) -> Outcome:
        user = self._user(cmd)
        self._view(Principal(user_id=user))
        if user in self.followers:
            return Outcome(reply={"snapshot_id": self.snapshot_id(), "followers": len(self.followers)})
        self.followers.add(user)
        out = self._commit(records=[{"t": "follow", "user": user, "on": True}],
                           delta=[{"op": "followers", "total": len(self.followers)}], tracks_changed=False,
                           reply={"followers": len(self.followers)})
        out.effects.append(Command(kind=SESSION, entity_id=user, op="library_follow_playlist",
                                   args={"playlist_id": self.id}, principal=SYSTEM))
        return out

    @op("unfollow")
    def _op_unfollow(self, cmd: Command, a: Args) -> Outcome:
        user = self._user(cmd)
        self._exists()
        if user not in self.followers:
            self._view(Principal(user_id=user))
            return Outcome(reply={"snapshot_id": self.snapshot_id(), "followers": len(self.followers)})
        self.followers.discard(user)
        out = self._commit(records=[{"t": "follow", "user": user, "on": False}],
                           delta=[{"op": "followers", "total": len(self.followers)}], tracks_changed=False,
                           reply={"followers": len(self.followers)})
        out.effects.append(Command(kind=SESSION, entity_id=user, op="library_unfollow_playlist",
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

    # -- Yjs ----------------------------------------------------------------------------------------
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
            scan = scan_update(update)
        except MalformedError as exc:
            raise bad(f"not a Yjs update: {exc.message}", ErrorCode.BAD_REQUEST) from None
        # items of moved entries that this update deletes (already deleted here: see
        # playlist_merge.Correction.concurrent_deletes)
        moved = doc.moved_items_in(scan.deletes)
        try:
            change = doc.apply_remote(update)
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

    # ==========================================================================================
    # replay, snapshot, restore
    # ==========================================================================================
    def apply(self, record: Any) -> None:
        if self._history.replay(record, self.version, self.snapshot_id):
            return
        t = record["t"]
        if t == "y":
            self.doc.begin(record.get("by"))
            for u in record["u"]:
                self.doc.apply_remote(u)
            self.doc.finish()
            for c, k, sc, sk in record.get("m", ()):
                self.doc.add_successor((c, k), (sc, sk))
        elif t == "create":
            self.owner, self.created_at = record["owner"], record.get("at", 0)
        elif t == "collab":
            if record["role"] is None:
                self.collaborators.pop(record["user"], None)
            else:
                self.collaborators[record["user"]] = record["role"]
        elif t == "follow":
            (self.followers.add if record["on"] else self.followers.discard)(record["user"])
        elif t == "listen":
            (self.listeners.add if record["on"] else self.listeners.discard)(record["user"])
        elif t in FORGET_RECORDS:
            self._apply_forget(record)

    def snapshot(self) -> Any:
        self._history.close_gap(self.version, self.snapshot_id)
        return {"v": 1, **self.doc.snapshot(),        # doc, rows, graveyard, tomb, foreign
                **self._history.snapshot(),           # history, floor
                "owner": self.owner, "at": self.created_at,
                "collaborators": dict(self.collaborators), "followers": sorted(self.followers),
                "listeners": sorted(self.listeners), **self._retired_state()}

    def restore(self, data: Any) -> None:
        self.doc = PlaylistDoc.restore(data)
        self.owner = data.get("owner")
        self.created_at = data.get("at", 0)
        self.collaborators = dict(data.get("collaborators", {}))
        self.followers = set(data.get("followers", ()))
        self.listeners = set(data.get("listeners", ()))
        self.retired = data.get("retired")
        self._history.restore(data)
