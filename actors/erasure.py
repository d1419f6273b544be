"""The erasure registry (kind `erasure`, id `registry`): the durable record that drives account
deletions to completion, and what is kept after them (docs/data-rights.md). Pure, system ops only.

State
  pending     user id -> {deletion_id, started_ms, plan | None}: deletions begun and not finished.
              The plan is the list of playlists the deletion must visit, recorded once (from the
              session, before it is erased), so a resumed deletion visits the same ones.
  tombstones  pseudonym -> deleted_ms: HMAC-SHA256(server secret, user id) of each finished
              deletion, kept TOMBSTONE_TTL_MS (the longest token lifetime): gateways refuse tokens
              issued before the deletion until none can still be valid. Not the user id.
  audit       the last AUDIT_KEPT deletions: {deletion_id, started_ms, finished_ms}: that a
              deletion happened and when, with the random id the user got as a receipt; nothing
              that links it to the user.

Ops (system only)
  begin {user_id, deletion_id}  -> {deletion_id, started_ms, plan, resumed}   (an existing pending
                                   deletion of the user is answered as it is: idempotent)
  plan {user_id, playlists}      -> {plan}        (once; a second plan is answered with the first)
  done {user_id, pseudonym}      -> {deletion_id, finished_ms}   (the user id leaves the state; the
                                   deletion then compacts this entity: actors/maintenance.py)
  status {after?}                -> {pending: [user ids], started_ms: {user id: ms}, tombstones:
                                   {pseudonym: ms}, version}
                                   (the tombstones added after version `after`: gateways poll
                                   incrementally)

Records: ["begin", user, deletion_id, ms], ["plan", user, [playlist ids]], ["done", user,
pseudonym, ms].
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from actors.entity import Command, Entity, Outcome
from protocols.errors import ErrorCode, SyncopateError

ERASURE = "erasure"
REGISTRY = "registry"
TOMBSTONE_TTL_MS = 30 * 86400 * 1000       # gateway/auth.py MAX_TTL_S: no token lives longer
AUDIT_KEPT = 10_000
MAX_PLAN = 100_000
DELETION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
PSEUDONYM_RE = re.compile(r"^[0-9a-f]{64}$")


def _err(message: str, code: ErrorCode = ErrorCode.INVALID_FIELD) -> SyncopateError:
    return SyncopateError(code, message)


def _user(args: dict) -> str:
    u = args.get("user_id")
    if not isinstance(u, str) or not 0 < len(u) <= 64:
        raise _err("user_id must be a user id")
    return u


class ErasureRegistry(Entity):
    kind = ERASURE
    snapshot_every = 100

    def __init__(self, entity_id, env) -> None:
        super().__init__(entity_id, env)
        self.pending: dict[str, dict] = {}
        self.tombstones: dict[str, list[int]] = {}   # pseudonym -> [deleted_ms, version added]
        self.audit: OrderedDict[str, dict] = OrderedDict()

    def handle(self, cmd: Command) -> Outcome:
        if not cmd.principal.system:
            raise _err(f"{cmd.op} is an internal operation", ErrorCode.FORBIDDEN)
        if self.id != REGISTRY:
            raise _err(f"no erasure registry {self.id}", ErrorCode.NOT_FOUND)
        args = cmd.args if isinstance(cmd.args, dict) else {}
        fn = self._OPS.get(cmd.op)
        if fn is None:
            raise _err(f"erasure has no op {cmd.op!r}", ErrorCode.UNKNOWN_MESSAGE_TYPE)
        return fn(self, cmd, args)

    def _op_begin(self, cmd: Command, args: dict) -> Outcome:
        user = _user(args)
        p = self.pending.get(user)
        if p is not None:
            return Outcome(reply={**self._public(p), "resumed": True})
        did = args.get("deletion_id")
        if not isinstance(did, str) or not DELETION_ID_RE.match(did):
            raise _err("deletion_id must be a random id (16 to 64 url-safe characters)")
        if did in self.audit:
            raise _err("deletion_id exists", ErrorCode.CONFLICT)
        rec = ["begin", user, did, cmd.now_ms]
        self.apply(rec)
        return Outcome(reply={**self._public(self.pending[user]), "resumed": False}, records=[rec])

    def _op_plan(self, cmd: Command, args: dict) -> Outcome:
        user = _user(args)
        p = self.pending.get(user)
        if p is None:
            raise _err(f"no deletion of {user} in progress", ErrorCode.NOT_FOUND)
        if p["plan"] is not None:
            return Outcome(reply={"plan": list(p["plan"])})
        ids = args.get("playlists")
        if not isinstance(ids, list) or len(ids) > MAX_PLAN or not all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids):
            raise _err("playlists must list playlist ids")
        rec = ["plan", user, list(dict.fromkeys(ids))]
        self.apply(rec)
        return Outcome(reply={"plan": list(rec[2])}, records=[rec])

    def _op_done(self, cmd: Command, args: dict) -> Outcome:
        user = _user(args)
        pseudonym = args.get("pseudonym")
        if not isinstance(pseudonym, str) or not PSEUDONYM_RE.match(pseudonym):
            raise _err("pseudonym must be an HMAC-SHA256 hex digest")
        p = self.pending.get(user)
        if p is None:
            raise _err(f"no deletion of {user} in progress", ErrorCode.NOT_FOUND)
        rec = ["done", user, pseudonym, cmd.now_ms]
        did = p["deletion_id"]
        self.apply(rec)
        return Outcome(reply={"deletion_id": did, "finished_ms": cmd.now_ms}, records=[rec])

    def _op_status(self, cmd: Command, args: dict) -> Outcome:
        after = args.get("after", 0)
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise _err("after must be a version (an integer >= 0)")
        return Outcome(reply={"pending": sorted(self.pending), "version": self.version,
                              "started_ms": {u: p["started_ms"] for u, p in self.pending.items()},
                              "tombstones": {k: at for k, (at, v) in self.tombstones.items() if v > after}})

    def _public(self, p: dict) -> dict:
        return {"deletion_id": p["deletion_id"], "started_ms": p["started_ms"],
                "plan": list(p["plan"]) if p["plan"] is not None else None}

    # -- persistence -----------------------------------------------------------------------------
    def apply(self, rec: Any) -> None:
        tag = rec[0]
        if tag == "begin":
            self.pending[rec[1]] = {"deletion_id": rec[2], "started_ms": rec[3], "plan": None}
        elif tag == "plan":
            self.pending[rec[1]]["plan"] = list(rec[2])
        elif tag == "done":
            _, user, pseudonym, now = rec
            p = self.pending.pop(user)
            self.tombstones = {k: t for k, t in self.tombstones.items() if t[0] > now - TOMBSTONE_TTL_MS}
            self.tombstones[pseudonym] = [now, self.version + 1]
            self.audit[p["deletion_id"]] = {"deletion_id": p["deletion_id"], "started_ms": p["started_ms"],
                                            "finished_ms": now}
            while len(self.audit) > AUDIT_KEPT:
                self.audit.popitem(last=False)
        else:
            raise ValueError(f"unknown erasure record {tag!r}")

    def snapshot(self) -> Any:
        return {"pending": self.pending, "tombstones": self.tombstones, "audit": list(self.audit.values())}

    def restore(self, data: Any) -> None:
        self.pending = {u: dict(p) for u, p in data["pending"].items()}
        self.tombstones = dict(data["tombstones"])
        self.audit = OrderedDict((a["deletion_id"], a) for a in data["audit"])

    _OPS = {"begin": _op_begin, "plan": _op_plan, "done": _op_done, "status": _op_status}
