"""SessionEntity: one per user (entity id = user id). The user's open connections across every
gateway (presence), signed-out devices, and the library (actors/library.py).

docs/sessions.md describes every op, reply, event and timing. In short:

- Presence is driven by the gateway (system ops): connect / disconnect / heartbeat. Connect and
  disconnect are persisted (a record each) so a host restart keeps presence and pushes carry a
  version; heartbeats only refresh `last_seen` in memory (soft state: no record, no version).
  `tick` removes connections silent for CONNECTION_TIMEOUT_MS.
- Sign-out (`end_connection`) records the device as revoked and pushes `session.ended` with
  `close=True` to each of its open connections.
- Library changes are `LibraryChanged` records (a list of `ItemChange`); every change pushes
  `library.changed` with the new version; a bounded change log (kept in the snapshot too, so it
  survives passivation) answers `resume`.

Records and the snapshot are typed and versioned (actors/session_records.py, which also reads every
older stored form). Records carry the version they become (self.version + 1 when handled), so replay
rebuilds the change log exactly. `handle` validates everything first, then builds the record and applies it
through the same `_apply` as replay: a refused command changes nothing, and replay == handle.
"""
from __future__ import annotations

from typing import Any

from actors.args import Args, Choice, Conn, Int, Str, address, invalid, list_arg, out_of_range
from actors.entity import Command, Entity, Env, Event, OpSpec, Outcome, Principal, op
from actors.library import TYPE_CODE, TYPES, Library
from actors.session_rights import SessionRightsOps
from actors.session_records import (
    ChangeLog,
    CollabChanged,
    Connected,
    Disconnected,
    ItemChange,
    LibraryChanged,
    Presence,
    SessionRecord,
    SessionSnapshot,
    SignedOut,
    record_from_wire,
)
from catalog import require
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import PLAYLIST, SESSION, MessageType
from protocols.uris import make_uri, parse_uri, require_id
from protocols.wire import ConnAddress

# -- timings and limits (docs/sessions.md) ----------------------------------------------------------
HEARTBEAT_INTERVAL_MS = 15_000        # what the gateway should send per connection
CONNECTION_TIMEOUT_MS = 45_000        # 3 missed heartbeats: the connection is gone
TICK_MS = 5_000                       # expiry sweep: presence reflects a vanished link in <= 50 s
MAX_URIS = 50                         # per library call (REST enforces 40 for /me/library)
MAX_PAGE = 50                         # library_list limit
DEFAULT_PAGE = 20
CHANGE_LOG_ITEMS = 512                # library changes kept for resume (in memory and snapshot)
MAX_CONNECTIONS = 100                 # open connections per user
MAX_REVOKED = 1000                    # remembered signed-out devices (oldest forgotten first)

UNSUPPORTED_TYPES = ("episode", "show", "user")

_OP_NAME = {"s": "save", "r": "remove"}


def _err(code: ErrorCode, message: str, **details) -> SyncopateError:
    return SyncopateError(code, message, **details)


class SessionEntity(SessionRightsOps, Entity):
    kind = SESSION
    per_user = True
    tick_ms = TICK_MS
    snapshot_every = 500

    def __init__(self, entity_id: str, env: Env) -> None:
        super().__init__(entity_id, env)
        self.library = Library()
        self.conns: dict[ConnAddress, Presence] = {}
        self.revoked: dict[str, int] = {}          # device id -> revoked at (ms), oldest first
        self.collab: dict[str, str | None] = {}    # playlist id -> role: playlists the user collaborates on
        self.log = ChangeLog(CHANGE_LOG_ITEMS)     # library changes for resume (actors/session_records.py)
        self._restored = False                     # activated from storage: give connections a grace
        self._grace_until: int | None = None
        cfg = env.config if env is not None and env.config else {}
        self.timeout_ms = int(cfg.get("session_connection_timeout_ms", CONNECTION_TIMEOUT_MS))

    # ==========================================================================================
    # dispatch
    # ==========================================================================================
    # Entity.handle: the op table is the @op declarations below (docs/sessions.md)
    def authorize(self, cmd: Command, spec: OpSpec) -> str | None:
        if not (cmd.principal.system or cmd.principal.user_id == self.id):
            raise _err(ErrorCode.FORBIDDEN, "a user reads and changes only their own session")
        return "system" if cmd.principal.system else "user"

    def run(self, spec: OpSpec, cmd: Command, a: Args) -> Outcome:
        out = spec.fn(self, cmd, a)
        if cmd.origin and self.conns:
            # any request from a connection shows it is alive (soft state, like a heartbeat)
            self._seen(ConnAddress.parse(cmd.origin), cmd.now_ms)
        return out

    # ==========================================================================================
    # presence
    # ==========================================================================================
    @op("connect", system=True, args={"conn": Conn(required=True), "device_id": Str(max_len=200),
                                      "client": Str(max_len=32, default="app"), "gateway": Str(max_len=200)})
    def _op_connect(self, cmd: Command, args: Args) -> Outcome:
        conn, device_id, client = args["conn"], args["device_id"], args["client"]
        gateway = args["gateway"] or conn.gateway
        if device_id is not None and self._is_revoked(device_id, args.get("iat")):
            raise _err(ErrorCode.SESSION_ENDED, "this device was signed out", device_id=device_id)
        old = self.conns.get(conn)
        if old is not None and old.device_id == device_id and old.client == client and old.gateway == gateway:
            old.seen_ms = max(old.seen_ms, cmd.now_ms)        # a repeated connect: a heartbeat
            return Outcome(reply=self._connect_reply(self.version))
        if old is None and len(self.conns) >= MAX_CONNECTIONS:
            raise _err(ErrorCode.LIMIT_EXCEEDED, f"at most {MAX_CONNECTIONS} open connections per user")
        v = self.version + 1
        rec = Connected(v, conn, device_id, client, gateway, cmd.now_ms)
        self._apply(rec)
        return Outcome(reply=self._connect_reply(v), records=[rec.to_wire()],
                       events=[self._presence_event("connected", [conn], device_id)])

    def _connect_reply(self, version: int) -> dict:
        return {"version": version, "connections": self._public_conns(None)}

    @op("disconnect", system=True, args={"conn": Conn(required=True)})
    def _op_disconnect(self, cmd: Command, args: Args) -> Outcome:
        conn = args["conn"]
        if conn not in self.conns:
            return Outcome(reply={"removed": False})
        device_id = self.conns[conn].device_id
        rec = Disconnected(self.version + 1, [conn], "disconnected")
        self._apply(rec)
        return Outcome(reply={"removed": True}, records=[rec.to_wire()],
                       events=[self._presence_event("disconnected", [conn], device_id)])

    @op("product_changed", system=True, args={"product": Choice(("premium", "free"), required=True)})
    def _op_product_changed(self, cmd: Command, args: Args) -> Outcome:
        """The account's product changed (an effect of the account entity): every open connection of
        the user hears it now, so a downgrade applies to sockets opened on a premium token without
        waiting for that token to expire. Nothing is stored here: the account holds the product."""
        return Outcome(reply={"product": args["product"]},
                       events=[Event(type=MessageType.SESSION_CHANGED.value,
                                     payload={"reason": "product", "product": args["product"]}, to=self.id)])

    @op("heartbeat", system=True)
    def _op_heartbeat(self, cmd: Command, args: Args) -> Outcome:
        """`{conn}` -> `{known}`, or `{conns: [...]}` (all of a user's connections on one gateway
        in one command) -> `{unknown: [...]}`. An unknown connection expired here (or never
        connected): the gateway re-sends `connect`. Soft state: no record, no version."""
        if "conns" in args:
            conns = list_arg(args.get("conns"), "conns")
            if len(conns) > MAX_CONNECTIONS or not all(isinstance(c, str) for c in conns):
                raise invalid(f"conns must be at most {MAX_CONNECTIONS} connection ids")
            # answered in the gateway's own spelling: it looks the unknown ones up by name
            unknown = [c for c in conns if not self._seen(address(c), cmd.now_ms)]
            return Outcome(reply={"unknown": unknown})
        conn = Conn(required=True).parse(args, "conn")
        return Outcome(reply={"known": self._seen(conn, cmd.now_ms)})

    def _seen(self, conn: ConnAddress | None, now_ms: int) -> bool:
        c = self.conns.get(conn) if conn is not None else None
        if c is None:
            return False
        if now_ms > c.seen_ms:
            c.seen_ms = now_ms
        return True

    @op("list_connections", role="user")
    def _op_list_connections(self, cmd: Command, args: Args) -> Outcome:
        return Outcome(reply={"connections": self._public_conns(cmd.origin), "version": self.version})

    @op("end_connection", role="user", args={"device_id": Str(max_len=200, required=True)})
    def _op_end_connection(self, cmd: Command, args: Args) -> Outcome:
        device_id = args["device_id"]
        v = self.version + 1
        closing = [c for c, info in self.conns.items() if info.device_id == device_id]
        rec = SignedOut(v, device_id, cmd.now_ms)
        self._apply(rec)
        by = None if cmd.principal.system else cmd.principal.device_id
        # presence first, then the goodbye: session.ended is the last frame a closed connection gets
        events = [self._presence_event("signed_out", closing, device_id)]
        events += [Event(type=MessageType.SESSION_ENDED.value,
                         payload={"reason": "signed_out", "device_id": device_id, "by_device": by, "conn": str(c)},
                         to=f"conn:{c}", close=True)
                   for c in closing]
        return Outcome(reply={"device_id": device_id, "closed": len(closing), "version": v},
                       records=[rec.to_wire()], events=events)

    @op("check_device", role="user", args={"device_id": Str(max_len=200, required=True)})
    def _op_check_device(self, cmd: Command, args: Args) -> Outcome:
        device_id = args["device_id"]
        at = self.revoked.get(device_id)
        return Outcome(reply={"revoked": self._is_revoked(device_id, args.get("iat")), "revoked_at": at})

    def _is_revoked(self, device_id: str, iat: Any = None) -> bool:
        """Revoked unless the token was issued (JWT `iat`, seconds) after the sign-out: signing in
        again on the device mints a new token, which is accepted."""
        at = self.revoked.get(device_id)
        if at is None:
            return False
        if isinstance(iat, (int, float)) and not isinstance(iat, bool) and iat * 1000 > at:
            return False
        return True

    def tick(self, now_ms: int) -> Outcome | None:
        if self._restored and self._grace_until is None:
            # Activated from storage: connections restored from the log have not been heard
            # from by *this* activation; give them one full timeout before expiring them.
            self._grace_until = now_ms + self.timeout_ms
        if self._grace_until is not None and now_ms < self._grace_until:
            return None
        dead = [c for c, info in self.conns.items() if now_ms - info.seen_ms > self.timeout_ms]
        if not dead:
            return None
        rec = Disconnected(self.version + 1, dead, "timeout")
        devices = {self.conns[c].device_id for c in dead}
        self._apply(rec)
        return Outcome(records=[rec.to_wire()],
                       events=[self._presence_event("timeout", dead, devices.pop() if len(devices) == 1 else None)])

    def idle(self) -> bool:
        return not self.conns

    def _public_conns(self, origin) -> list[dict]:
        cur = ConnAddress.parse(origin) if origin else None
        out = []
        for conn, p in self.conns.items():
            d = {"conn": str(conn), "device_id": p.device_id, "client": p.client, "gateway": p.gateway,
                 "connected_since": p.since_ms, "last_seen": p.seen_ms}
            if origin is not None:
                d["current"] = conn == cur
            out.append(d)
        return out

    def _presence_event(self, reason: str, conns: list[ConnAddress], device_id: str | None) -> Event:
        return Event(type=MessageType.SESSION_CHANGED.value,
                     payload={"reason": reason, "conns": [str(c) for c in conns], "device_id": device_id,
                              "connections": self._public_conns(None)},
                     to=self.id)

    # ==========================================================================================
    # library
    # ==========================================================================================
    @op("library_save", role="user")
    def _op_library_save(self, cmd: Command, args: Args) -> Outcome:
        items = self._parse_items(args, check_catalog=True)
        now = cmd.now_ms
        changes, seen = [], set()
        base: dict[str, int] = {}
        for kind, ident, _uri in items:
            if (kind, ident) in seen:
                continue
            seen.add((kind, ident))
            coll = self.library[kind]
            if coll.get(ident) is not None:
                continue                            # saved twice = one item, first added_at kept
            if kind not in base:                    # added_at never goes back in time per type
                base[kind] = max(now, coll.newest_ts() or 0)
            changes.append(ItemChange("s", TYPE_CODE[kind], ident, base[kind]))
        return self._library_change(cmd, changes, follow_effects=True)

    @op("library_remove", role="user")
    def _op_library_remove(self, cmd: Command, args: Args) -> Outcome:
        items = self._parse_items(args, check_catalog=False)
        changes, seen = [], set()
        for kind, ident, uri in items:
            if (kind, ident) in seen:
                continue
            seen.add((kind, ident))
            if self.library[kind].get(ident) is not None:
                changes.append(ItemChange("r", TYPE_CODE[kind], ident, None))
            else:
                self._check_known(kind, ident, uri)  # absent: fine, unless the id is unknown
        return self._library_change(cmd, changes, follow_effects=True)

    @op("library_contains", role="user")
    def _op_library_contains(self, cmd: Command, args: Args) -> Outcome:
        items = self._parse_items(args, check_catalog=False)
        return Outcome(reply=[self.library[k].get(i) is not None for k, i, _ in items])

    @op("library_list", role="user", args={"offset": Int(lo=0, default=0),
                                           "limit": Int(lo=1, hi=MAX_PAGE, default=DEFAULT_PAGE)})
    def _op_library_list(self, cmd: Command, args: Args) -> Outcome:
        kind = self._list_type(args.get("type"))
        offset, limit = args["offset"], args["limit"]
        after = args.get("after")
        if after is not None and (not isinstance(after, str) or len(after) > 64):
            raise invalid("after must be an id")
        coll = self.library[kind]
        total = len(coll)
        reply: dict[str, Any] = {"type": kind, "total": total, "limit": limit,
                                 "library_version": self.version}
        if kind == "artist":
            # Followed artists page in id order with a cursor (`after` = the last id seen), as
            # Spotify's /me/following: the cursor stays valid while the library changes.
            rows = coll.by_id(after=after, limit=limit + 1, offset=offset)
            more = len(rows) > limit
            rows = rows[:limit]
            reply["offset"] = offset
            reply["cursors"] = {"after": rows[-1][0] if rows and more else None}
        else:
            if after is not None:
                raise _err(ErrorCode.BAD_REQUEST, f"cursor paging is for artists; {kind}s page by offset")
            rows = coll.newest(offset, limit)
            more = offset + len(rows) < total
            reply["offset"] = offset
        reply["next_offset"] = (offset + len(rows)) if more else None
        reply["items"] = [{"uri": make_uri(kind, i), "id": i, "added_at": ts} for i, ts in rows]
        return Outcome(reply=reply)

    @op("library_follow_playlist", system=True)
    @op("playlist_created", system=True)
    def _op_library_follow_playlist(self, cmd: Command, args: Args) -> Outcome:
        pid = self._playlist_arg(args)
        if self.library["playlist"].get(pid) is not None:
            return Outcome(reply={"changed": False, "library_version": self.version})
        ts = max(cmd.now_ms, self.library["playlist"].newest_ts() or 0)
        return self._library_change(cmd, [ItemChange("s", TYPE_CODE["playlist"], pid, ts)], follow_effects=False)

    @op("library_unfollow_playlist", system=True)
    def _op_library_unfollow_playlist(self, cmd: Command, args: Args) -> Outcome:
        pid = self._playlist_arg(args)
        if self.library["playlist"].get(pid) is None:
            return Outcome(reply={"changed": False, "library_version": self.version})
        return self._library_change(cmd, [ItemChange("r", TYPE_CODE["playlist"], pid, None)], follow_effects=False)

    def _library_change(self, cmd: Command, changes: list, follow_effects: bool) -> Outcome:
        if not changes:
            return Outcome(reply={"changed": False, "library_version": self.version})
        v = self.version + 1
        rec = LibraryChanged(v, changes)
        self._apply(rec)
        effects = []
        if follow_effects:
            principal = cmd.principal if not cmd.principal.system else Principal(user_id=self.id)
            pcode = TYPE_CODE["playlist"]
            for op, tcode, ident, _ in changes:
                if tcode == pcode:
                    # the playlist entity counts followers; its own follow effect comes back as
                    # library_follow_playlist, which is a no-op here (already saved): no loop.
                    effects.append(Command(kind=PLAYLIST, entity_id=ident,
                                           op="follow" if op == "s" else "unfollow",
                                           args={"id": ident}, principal=principal,
                                           op_id=f"{self.key}@{v}:{op}:{ident}"))
        return Outcome(reply={"changed": True, "library_version": v}, records=[rec.to_wire()],
                       events=[Event(type=MessageType.LIBRARY_CHANGED.value,
                                     payload={"library_version": v, "changes": _public_changes(changes)},
                                     to=self.id)],
                       effects=effects)

    # -- validation ------------------------------------------------------------------------------
    def _parse_items(self, args: dict, check_catalog: bool) -> list[tuple[str, str, str]]:
        """[(type, id, uri)] from `uris` (a list, or a comma-separated string) or from `type` +
        `ids`. Refuses the whole call on the first bad entry."""
        uris = args.get("uris")
        if uris is None and args.get("ids") is not None:
            kind = args.get("type")
            if kind not in TYPES:
                raise self._type_error(kind)
            ids = list_arg(args.get("ids"), "ids")
            uris = [make_uri(kind, require_id(i, f"{kind} id")) for i in ids]
        else:
            uris = list_arg(uris, "uris")
        if not uris:
            raise out_of_range("uris: at least one uri is required")
        if len(uris) > MAX_URIS:
            raise out_of_range(f"at most {MAX_URIS} uris per call", limit=MAX_URIS)
        out = []
        for uri in uris:
            if isinstance(uri, str):
                kind = uri.split(":")[1] if uri.count(":") == 2 and uri.startswith("spotify:") else None
                if kind in UNSUPPORTED_TYPES:
                    raise _err(ErrorCode.BAD_REQUEST, f"unsupported type: {kind} ({uri})", uri=uri)
            kind, ident = parse_uri(uri)            # INVALID_URI when malformed
            if kind not in TYPE_CODE:
                raise _err(ErrorCode.BAD_REQUEST, f"unsupported type: {kind} ({uri})", uri=uri)
            if check_catalog:
                self._check_known(kind, ident, uri)
            out.append((kind, ident, uri))
        return out

    def _check_known(self, kind: str, ident: str, uri: str) -> None:
        if kind != "playlist":                      # playlists: the playlist entity knows them
            require(self.env.catalog if self.env is not None else None, uri, kind)

    def _list_type(self, kind: Any) -> str:
        if kind in TYPES:
            return kind
        # plural forms, as the REST paths name them
        if isinstance(kind, str) and kind.endswith("s") and kind[:-1] in TYPES:
            return kind[:-1]
        raise self._type_error(kind)

    @staticmethod
    def _type_error(kind: Any) -> SyncopateError:
        if kind in UNSUPPORTED_TYPES:
            return _err(ErrorCode.BAD_REQUEST, f"unsupported type: {kind}")
        return invalid(f"type must be one of {', '.join(TYPES)}")

    @staticmethod
    def _playlist_arg(args: dict) -> str:
        pid = args.get("playlist_id", args.get("id"))
        if isinstance(pid, str) and pid.startswith("spotify:"):
            pid = parse_uri(pid, "playlist")[1]
        return require_id(pid, "playlist id")

    # ==========================================================================================
    # resume and subscribe
    # ==========================================================================================
    @op("resume", role="user", args={"since": Int(lo=0, required=True)})
    def _op_resume(self, cmd: Command, args: Args) -> Outcome:
        return Outcome(reply=self._resume(args["since"]))

    @op("subscribe", role="user")
    def _op_subscribe(self, cmd: Command, args: Args) -> Outcome:
        """The gateway subscribes each of the user's connections (the host then routes this
        entity's pushes to it). With `since`, answers like resume; without, a summary."""
        since = args.get("since")
        if isinstance(since, int) and not isinstance(since, bool) and since >= 0:
            return Outcome(reply=self._resume(since))
        return Outcome(reply={"version": self.version, "connections": self._public_conns(cmd.origin),
                              "library": {"totals": self.library.totals()}})

    def _resume(self, since: int) -> dict:
        if self.log.floor <= since <= self.version:
            entries = [{"library_version": v, "changes": _public_changes(ch)}
                       for v, ch in self.log.since(since)]
            return {"full": False, "since": since, "version": self.version, "library": entries,
                    "connections": self._public_conns(None)}
        lib = {}
        for kind in TYPES:
            coll = self.library[kind]
            rows = coll.by_id(limit=MAX_PAGE) if kind == "artist" else coll.newest(0, MAX_PAGE)
            lib[kind] = {"total": len(coll),
                         "items": [{"uri": make_uri(kind, i), "id": i, "added_at": ts} for i, ts in rows]}
        return {"full": True, "since": since, "version": self.version, "library": lib,
                "connections": self._public_conns(None)}

    # ==========================================================================================
    # records, snapshot, replay
    # ==========================================================================================
    def apply(self, record: Any) -> None:
        self._restored = True
        rec = record_from_wire(record)
        self._apply(rec)
        if rec.version > self.version:
            self.version = rec.version

    def _apply(self, rec: SessionRecord) -> None:
        if isinstance(rec, LibraryChanged):
            lib = self.library
            for op, tcode, ident, ts in rec.changes:
                coll = lib[TYPES[tcode]]
                if op == "s":
                    coll.add(ident, ts)
                else:
                    coll.remove(ident)
            self.log.append(rec.version, rec.changes)
        elif isinstance(rec, Connected):
            old = self.conns.get(rec.conn)
            since = old.since_ms if old is not None and old.device_id == rec.device_id else rec.at_ms
            self.conns[rec.conn] = Presence(rec.device_id, rec.client, rec.gateway, since, rec.at_ms)
        elif isinstance(rec, Disconnected):
            for conn in rec.conns:
                self.conns.pop(conn, None)
        elif isinstance(rec, SignedOut):
            device_id = rec.device_id
            self.revoked.pop(device_id, None)
            self.revoked[device_id] = rec.at_ms
            while len(self.revoked) > MAX_REVOKED:
                del self.revoked[next(iter(self.revoked))]
            for conn in [c for c, info in self.conns.items() if info.device_id == device_id]:
                del self.conns[conn]
        elif isinstance(rec, CollabChanged):
            self._apply_collab(rec)
        else:
            raise ValueError(f"unknown session record {rec!r}")

    def snapshot(self) -> Any:
        return SessionSnapshot(self.version, self.library.dump(), self.conns, self.revoked, self.log,
                               self.log.floor, self.collab).to_wire()

    def restore(self, data: Any) -> None:
        snap = SessionSnapshot.from_wire(data)
        self.library = Library.load(snap.library)
        self.conns = snap.connections
        self.revoked = snap.revoked
        self.log = ChangeLog(CHANGE_LOG_ITEMS, snap.changes, snap.changes_floor)
        self.collab = snap.collaborating
        self.version = snap.version or self.version
        self._restored = True
        self._grace_until = None


# -- helpers ----------------------------------------------------------------------------------------
def _public_changes(changes: list) -> list[dict]:
    return [{"op": _OP_NAME[op], "uri": make_uri(TYPES[tcode], ident), "added_at": ts}
            for op, tcode, ident, ts in changes]
