"""The one owner of what each connection follows: membership, watermarks, de-duplication, resync.

Every way a connection comes to follow an entity goes through `join` — an app's `subscribe`, the
automatic follow of the user's own session, a device's `register` (which follows its group), a Yjs
socket's join — and every way it stops goes through `leave`/`end`. Pushes from the hosts are routed
here (`route`), and recoveries too: a restarted host, a re-opened stream or a host's `Gap` make
`resync` resubscribe each local member from the last version it saw.

The guarantees a subscriber gets:
- it sees no push older than the state its subscribe answer carried (the host stream is ordered,
  and a member joins while its answer is read, before the next item of the same frame is routed);
- after version N it sees version N+1, or a `resync` carrying the state: a push whose `prev` (the
  previous version the host pushed for the entity) is beyond the member's watermark is a gap, so
  the member is resubscribed from its watermark and the push dropped (the answer covers it);
- it holds a subscription only while it may: a change of access (`playlist.access` pushes) ends the
  subscriptions of members who lost it (`subscription.ended`, or 4403 on a Yjs socket) and tells
  the others' adapters their new level (a Yjs viewer becomes writable without reconnecting).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from actors.entity import Command
from gateway.hub import CLOSE_SESSION_ENDED, Connection, Hub
from protocols import access as access_rules
from protocols import codec
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import MessageType
from protocols.wire import ConnAddress, Gap, Push, Reply

log = logging.getLogger("syncopate.subscriptions")

ACCESS = MessageType.PLAYLIST_ACCESS.value
RESYNC = MessageType.RESYNC.value
ENDED = MessageType.SUBSCRIPTION_ENDED.value
MAX_RETRIES = 40                 # resubscribe attempts (backoff 0.1 s doubling to 2 s: about a minute)


class Subscriptions:
    def __init__(self, gateway_id: str, hub: Hub, dispatcher, *,
                 pushes: dict[str, Callable[[Any], Any]] | None = None,
                 states: dict[str, Callable[[Any], Any]] | None = None,
                 personal: dict[str, Callable[[Connection, Any], Any]] | None = None,
                 personal_states: dict[str, Callable[[Connection, Any], Any]] | None = None) -> None:
        self.gateway_id = gateway_id
        self.hub = hub
        self.dispatcher = dispatcher
        # presenters (gateway/presenters.py): push type -> payload as clients read it; entity kind ->
        # its subscribe answer as clients read it (the subscribe result, a resync push)
        self.pushes = pushes or {}
        self.states = states or {}
        # push type -> (connection, presented payload) -> the keys that connection's copy adds to the
        # shared payload, or None for the shared frame (the active device's stream manifest,
        # gateway/streams.py)
        self.personal = personal or {}
        # entity kind -> the same for its resync state (the active device's resync carries its manifest)
        self.personal_states = personal_states or {}
        self.members: dict[str, set[Connection]] = {}
        # per connection: entity key -> last version delivered (watermark); key -> version answered
        self._wm: dict[Connection, dict[str, int]] = {}
        self._answered: dict[Connection, dict[str, int]] = {}
        self._resyncing: set[tuple[str, str]] = set()
        self._joining: dict[tuple[str, str], bool] = {}   # (conn, key) -> join in flight; False: cancelled
        self.gaps = 0
        self.resyncs = 0
        self.ended = 0

    # -- membership --------------------------------------------------------------------------------
    def address(self, conn: Connection) -> ConnAddress:
        return ConnAddress(self.gateway_id, conn.id)

    def follows(self, conn: Connection, key: str) -> bool:
        return key in self._wm.get(conn, ())

    def in_sync(self, conn: Connection, key: str) -> bool:
        """It follows `key` and no resync is under way: every push of `key` reaches it in order."""
        return self.follows(conn, key) and (conn.id, key) not in self._resyncing

    def watermark(self, conn: Connection, key: str) -> int | None:
        return self._wm.get(conn, {}).get(key)

    def keys(self) -> list[str]:
        return list(self.members)

    def has_members(self, key: str) -> bool:
        return bool(self.members.get(key))

    def join(self, conn: Connection, cmd: Command, on_reply: Callable[[Reply], None] | None = None) -> None:
        """Send `cmd` for `conn` (op `subscribe`, or any command with follow=True); when it succeeds the
        connection follows `cmd.key` from the answer's version. The callback runs while the host's
        stream is read, so membership is in place before the next push of the same frame."""
        cmd.origin = self.address(conn)
        key = cmd.key
        self._joining[(conn.id, key)] = True
        present = self.states.get(cmd.kind) if cmd.op == "subscribe" else None

        def answered(reply: Reply) -> None:
            wanted = self._joining.pop((conn.id, key), True)
            if reply.ok and not wanted and not conn.closed:
                if on_reply is not None:        # it left before the answer came: answered, not a member
                    on_reply(reply if present is None else Reply(reply.version, present(reply.payload)))
                return
            if reply.ok and conn.closed:
                self._unsubscribe(key, conn)      # the host added interest for a socket now gone
            if reply.ok and not conn.closed:
                self._add(conn, key, reply.version)
                policy = reply.payload.get("access") if isinstance(reply.payload, dict) else None
                if policy is not None and access_rules.access(policy, conn.principal.user_id) == "none":
                    # cannot happen for a correct entity (it refuses instead); never follow without access
                    self.leave(conn, key)
                    reply = Reply.fail(SyncopateError(ErrorCode.FORBIDDEN, "no access"))
            if present is not None and reply.ok:
                reply = Reply(reply.version, present(reply.payload))
            if on_reply is not None:
                on_reply(reply)

        self.dispatcher.request(cmd, answered)

    def subscribe(self, conn: Connection, key: str, since: int | None = None, *,
                  on_reply: Callable[[Reply], None] | None = None, retry: bool = False, attempt: int = 0) -> None:
        """Follow `key` through op `subscribe`. With retry, a retryable failure is tried again with
        backoff (a host starting, a stream re-opening) instead of leaving the connection deaf."""
        kind, _, eid = key.partition(":")

        def answered(reply: Reply) -> None:
            if not reply.ok and retry and reply.error.retryable and attempt < MAX_RETRIES and not conn.closed:
                asyncio.get_running_loop().call_later(min(0.1 * 2 ** attempt, 2.0), lambda: self.subscribe(
                    conn, key, since, on_reply=on_reply, retry=True, attempt=attempt + 1))
                return
            if on_reply is not None:
                on_reply(reply)

        self.join(conn, Command(kind, eid, "subscribe", {} if since is None else {"since": since}, conn.principal),
                  answered)

    def _add(self, conn: Connection, key: str, version: int) -> None:
        wm = self._wm.setdefault(conn, {})
        wm[key] = max(version, wm.get(key, -1))
        self._answered.setdefault(conn, {})[key] = wm[key]
        self.members.setdefault(key, set()).add(conn)

    def leave(self, conn: Connection, key: str) -> None:
        """Stop following; the host forgets this connection's interest (and the gateway's with its last).
        The unsubscribe travels through the entity's mailbox, ordered after this connection's
        subscribe, and names this connection only."""
        self._wm.get(conn, {}).pop(key, None)
        self._answered.get(conn, {}).pop(key, None)
        self._resyncing.discard((conn.id, key))
        members = self.members.get(key)
        if members is None or conn not in members:
            if self._joining.get((conn.id, key)):
                # its join is in flight: the unsubscribe follows it through the mailbox, and the
                # answer must not make it a member after all
                self._joining[(conn.id, key)] = False
                self._unsubscribe(key, conn)
            return
        members.discard(conn)
        if not members:
            del self.members[key]
        self._unsubscribe(key, conn)

    def _unsubscribe(self, key: str, conn: Connection) -> None:
        # The host keeps interest per connection (actors/host.py), so each leave is told, and one
        # connection's leave can't undo another's join in flight, whatever their order.
        kind, _, eid = key.partition(":")
        self.dispatcher.request(Command(kind, eid, "unsubscribe", {}, origin=self.address(conn)),
                                lambda reply: None)

    def drop(self, conn: Connection) -> None:
        """A connection closed: leave everything it followed."""
        for key in list(self._wm.get(conn, ())):
            self.leave(conn, key)
        self._wm.pop(conn, None)
        self._answered.pop(conn, None)

    def end(self, conn: Connection, key: str, err: SyncopateError) -> None:
        """The connection may no longer follow `key`: stop, and tell it (adapters may close instead)."""
        if not self.follows(conn, key):
            return
        self.leave(conn, key)
        self.ended += 1
        if conn.on_ended is not None:
            conn.on_ended(conn, key, err)
        else:
            conn.send({"type": ENDED, "entity": key, "error": err.to_wire()})

    # -- pushes ------------------------------------------------------------------------------------
    def _presented(self, push: Push) -> Push:
        fn = self.pushes.get(push.type)
        if fn is None:
            return push
        # the constructor, not dataclasses.replace (which introspects the fields on every call)
        return Push(push.key, push.version, push.type, fn(push.payload), push.user, push.conn, push.close,
                    push.fresh, push.prev)

    def route(self, push: Push) -> None:
        if push.conn is not None:
            conn = self.hub.get(push.conn.conn, push.user) if push.conn.gateway == self.gateway_id else None
            if conn is not None:
                self._send(conn, self._presented(push), {})
                if push.close:
                    conn.close(CLOSE_SESSION_ENDED, "session ended")
            return
        members = self.members.get(push.key)
        if members:
            frames: dict[str, Any] = {}
            shown = push
            for conn in list(members):
                if push.user is not None and conn.principal.user_id != push.user:
                    continue
                if shown is push:                 # presented once per push, for every socket
                    shown = self._presented(push)
                self._deliver(conn, shown, frames)
                if push.close:
                    conn.close(CLOSE_SESSION_ENDED, "session ended")
        if push.type == ACCESS and isinstance(push.payload, dict):
            self._access_changed(push.key, push.payload)

    def _deliver(self, conn: Connection, push: Push, frames: dict) -> None:
        key = push.key
        if (conn.id, key) in self._resyncing:
            return                        # the resubscribe answer will carry this version's state
        wm = self._wm.get(conn, {})
        if push.fresh:
            if push.version <= self._answered.get(conn, {}).get(key, -1):
                return                    # the state of that version reached it as an answer
            seen = wm.get(key)
            if seen is not None and push.prev >= 0 and push.prev > seen:
                self.gaps += 1
                log.info("gap on %s for %s: has %d, push %d follows %d", key, conn.id, seen, push.version, push.prev)
                self.resync(conn, key)
                return
            if key in wm:
                wm[key] = max(push.version, wm[key])
        self._send(conn, push, frames)

    def _send(self, conn: Connection, push: Push, frames: dict) -> None:
        if conn.on_push is not None:
            conn.on_push(conn, push)
            return
        own = self.personal.get(push.type)
        if own is not None:
            extra = own(conn, push.payload)
            if extra is not None:
                conn.send_frame(self._personal_frame(push, extra, conn.encoding, frames))
                return
        conn.send_frame(self._shared_frame(push, conn.encoding, frames))

    @staticmethod
    def _shared_frame(push: Push, encoding: str, frames: dict) -> Any:
        """The push's frame every member gets, encoded once per encoding."""
        frame = frames.get(encoding)
        if frame is None:
            frame = frames[encoding] = codec.encode_ws(
                codec.push(push.type, push.key, push.version, push.payload), encoding)
        return frame

    def _personal_frame(self, push: Push, extra: dict, encoding: str, frames: dict) -> Any:
        """The push with `extra`'s keys added at the end of its payload: the frame of
        `{**payload, **extra}`. In JSON it is the shared frame with `extra` written in before the
        payload's closing brace (the payload is the envelope's last field, orjson writes keys in
        order and without spaces), the same characters as encoding it whole."""
        payload = push.payload
        if encoding == codec.JSON and isinstance(payload, dict) and payload and extra \
                and not any(k in payload for k in extra):
            shared = self._shared_frame(push, encoding, frames)
            frag = getattr(extra, "json", None)      # gateway/streams.py Personal: encoded once
            if frag is None:
                frag = codec.encode_ws(extra, encoding)[1:-1]
                if hasattr(extra, "json"):
                    extra.json = frag
            return f"{shared[:-2]},{frag}}}}}"
        return codec.encode_ws(codec.push(push.type, push.key, push.version, {**payload, **extra}), encoding)

    def _access_changed(self, key: str, policy: dict) -> None:
        """A playlist's access policy changed: what each local member may do now."""
        for conn in list(self.members.get(key, ())):
            lvl = access_rules.access(policy, conn.principal.user_id)
            if lvl == "none":
                self.end(conn, key, SyncopateError(ErrorCode.FORBIDDEN, "access to this playlist was withdrawn"))
            elif conn.on_access is not None:
                conn.on_access(conn, key, lvl)

    # -- recovery ----------------------------------------------------------------------------------
    def on_gap(self, gap: Gap) -> None:
        for conn in list(self.members.get(gap.key, ())):
            self.resync(conn, gap.key)

    def host_restarted(self, host: int) -> None:
        """A host restarted (or our stream to it was re-opened) and forgot our interest."""
        for key in self.keys():
            if self.dispatcher.host_of(key) == host:
                for conn in list(self.members.get(key, ())):
                    self.resync(conn, key)

    def moved(self, changed: Callable[[str], bool]) -> None:
        """The membership view moved some entities (`changed(key)`): their new owner has none of
        our interest yet, so resubscribe their members there, from their watermarks."""
        for key in self.keys():
            if changed(key):
                for conn in list(self.members.get(key, ())):
                    self.resync(conn, key)

    def resync(self, conn: Connection, key: str, attempt: int = 0) -> None:
        """Resubscribe one member from its watermark. It gets the missed changes (or the state) as a
        `resync` push, then the pushes after it; a refusal for real ends the subscription."""
        if conn.closed or not self.follows(conn, key):
            return
        self._resyncing.add((conn.id, key))
        self.resyncs += 1
        since = self._wm.get(conn, {}).get(key)
        kind, _, eid = key.partition(":")

        def answered(reply: Reply) -> None:
            if conn.closed or not self.follows(conn, key):
                self._resyncing.discard((conn.id, key))
                return
            if reply.ok:
                if kind in self.states:
                    reply = Reply(reply.version, self.states[kind](reply.payload))
                own = self.personal_states.get(kind)
                if own is not None and conn.on_resync is None:
                    mine = own(conn, reply.payload)     # the keys this connection's copy adds
                    if mine is not None:
                        reply = Reply(reply.version, {**reply.payload, **mine})
                self._resyncing.discard((conn.id, key))
                self._wm[conn][key] = max(reply.version, self._wm[conn].get(key, 0))
                self._answered.setdefault(conn, {})[key] = self._wm[conn][key]
                if conn.on_resync is not None:
                    conn.on_resync(conn, key, reply.payload, reply.version)
                else:
                    conn.send(codec.push(RESYNC, key, reply.version, reply.payload))
                policy = reply.payload.get("access") if isinstance(reply.payload, dict) else None
                if policy is not None and conn.on_access is not None:
                    conn.on_access(conn, key, access_rules.access(policy, conn.principal.user_id))
            elif reply.error.retryable and attempt < MAX_RETRIES:
                # The restarted host may still be starting, or its stream re-opening: try again
                # rather than leave this connection deaf to the entity for good. Pushes meanwhile
                # are dropped for this member: the answer will carry them.
                asyncio.get_running_loop().call_later(min(0.1 * 2 ** attempt, 2.0), self.resync,
                                                      conn, key, attempt + 1)
            else:
                self._resyncing.discard((conn.id, key))
                self.end(conn, key, reply.error)

        cmd = Command(kind, eid, "subscribe", {} if since is None else {"since": since}, conn.principal,
                      origin=self.address(conn))
        self.dispatcher.request(cmd, answered)

    def stats(self) -> dict:
        return {"subscribed_keys": len(self.members), "gaps": self.gaps, "resyncs": self.resyncs,
                "ended": self.ended}
