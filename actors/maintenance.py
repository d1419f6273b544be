"""Host-level maintenance of one entity's storage, for user data rights (docs/data-rights.md):

- `ERASE` (system): erase the entity's key from the store (records, snapshot, owners row:
  Store.erase) and drop it from memory: its op cache and subscribers' interest go with it. An
  entity whose outbox still holds effects is refused (OVERLOADED, retryable): they are delivered
  first (a device group's listening events reach the royalty pipeline before it goes).
  The next message activates it afresh, as a phantom (nothing stored). `{}` -> `{erased: bool}`
  (False: nothing was stored; erasing again is a no-op).
- `COMPACT` (system): write a snapshot now, so the log entries up to it are dropped from the store,
  first forgetting what the op cache remembers of one user: `{forget: user_id}` -> `{compacted:
  bool, seq}`. The entity must already have scrubbed its own state (the playlist's
  `forget_user`); this removes what the host keeps beside it: log entries (which name their
  sender and carry its reply), op-cache rows whose sender is the user, whose op id names them (an
  effect's op id carries its source key, e.g. `session:<user>@7...`) or whose reply mentions them.
  When the stored snapshot is already at the committed seq, an empty log entry is appended first,
  so the new snapshot has a newer seq (a snapshot at the same seq is ignored: storage.base).

Both run from the entity's mailbox (EntityHost._drain awaits them in place, like an activation),
so every command queued before is handled, committed and released first and every command queued
after sees the result. Entities stay pure: neither is an entity op.

A part of EntityHost (a mixin over its state: self.slots, self.store, self.interest, self.metrics).
"""
from __future__ import annotations

import asyncio
import logging

from actors.entity import Command
from actors.slot import Sink, Slot, pack
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import Reply
from storage.base import Append, Record

log = logging.getLogger("syncopate.host")

ERASE = "__erase__"
COMPACT = "__compact__"
MAINTENANCE_OPS = frozenset({ERASE, COMPACT})
SETTLE_TIMEOUT_S = 10.0


class Maintenance:
    async def _settled(self, slot: Slot) -> None:
        """Wait until every outcome handled before is committed and released: erase and compact act on
        the stored state, which must be the whole of the entity's state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT_S
        # The committer releases in the same turn as its commit returns: inflight reaches 0 only
        # once every earlier outcome was answered. Polled at 1 ms, as Residency._snapshot does.
        while not slot.dead and slot.inflight:
            if loop.time() > deadline:
                raise SyncopateError(ErrorCode.TIMEOUT, f"{slot.key}: earlier commands did not settle")
            await asyncio.sleep(0.001)
        if slot.dead:
            raise SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"{slot.key} was evicted; retry")

    async def _maintain(self, slot: Slot, cmd: Command, sink: Sink) -> None:
        try:
            if not cmd.principal.system:
                raise SyncopateError(ErrorCode.FORBIDDEN, f"{cmd.op} is an internal operation")
            await self._settled(slot)
            if cmd.op == ERASE:
                reply = await self._erase_slot(slot)
            else:
                forget = cmd.args.get("forget") if isinstance(cmd.args, dict) else None
                if not isinstance(forget, str) or not forget:
                    raise SyncopateError(ErrorCode.INVALID_FIELD, "compact needs forget: a user id")
                reply = await self._compact_slot(slot, forget)
        except SyncopateError as err:
            sink(Reply.fail(err))
            return
        sink(Reply(slot.committed if slot.entity is not None else 0, reply))

    async def _erase_slot(self, slot: Slot) -> dict:
        if slot.outbox:
            # Its effects are still on their way (e.g. a device group's listening events to the
            # pipeline, which pays royalties on them): erasing now would lose them. Refused, to be
            # retried once they are delivered.
            raise SyncopateError(ErrorCode.OVERLOADED, f"{slot.key} has {len(slot.outbox)} effects on their way; "
                                 "retry once they are delivered")
        erased = False
        if not slot.phantom:
            # The one await: the store removes everything of the key in one transaction. If it
            # fails nothing was erased (STALE_EPOCH: another host owns it; STORE_UNAVAILABLE:
            # retry) and the slot stays as it was.
            erased = await self.store.erase(slot.key, slot.epoch)
            await self.store.purge()
        slot.acks.clear()
        slot.ops.clear()
        self.interest.pop(slot.key, None)
        rest = list(slot.mailbox)
        slot.mailbox.clear()
        self._evict(slot)
        for c, s in rest:            # commands queued behind the erase find the key empty
            self.enqueue(c, s)
        self.metrics.erased += 1
        return {"erased": erased}

    async def _compact_slot(self, slot: Slot, user: str) -> dict:
        if slot.phantom or slot.entity is None:
            return {"compacted": False, "seq": 0}
        needle = user.encode()
        ops = slot.ops
        for key in [k for k, (_, rb) in ops.entries.items()
                    if k[0] == user or (isinstance(k[1], str) and user in k[1]) or (rb is not None and needle in rb)]:
            del ops.entries[key]
            ops.at.pop(key, None)
        ops.bytes = sum(len(rb) for _, rb in ops.entries.values() if rb is not None)
        if slot.snapshot_seq >= slot.committed:
            # The stored snapshot is at the committed seq already (e.g. written at passivation,
            # before the user was forgotten), and a snapshot at the same seq is ignored
            # (storage.base): append an empty entry so the scrubbed snapshot gets a seq of its own.
            v = slot.committed + 1
            res = await self.store.append([Append(slot.key, slot.epoch, [Record(v, pack({"op": None, "recs": []}))])])
            if res[0] is not None:
                self._evict(slot)
                raise res[0]
            slot.entity.version = slot.committed = v
        slot.snapshotting = True
        if not await self._snapshot(slot):
            raise SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"{slot.key}: the snapshot failed; retry")
        await self.store.purge()        # the dropped log entries' old pages (SQLite's WAL)
        self.metrics.compacted += 1
        return {"compacted": True, "seq": slot.snapshot_seq}
