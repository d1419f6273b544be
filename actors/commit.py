"""Group commit and release: the host's output gate.

Part of EntityHost (a mixin over its state: self._pending, self._wake, self.store, self.interest,
self._deliver, self.metrics). Every outcome handled on the loop waits in self._pending; the committer
appends everything pending in ONE store call (one transaction: group commit), then releases, in
order: replies, pushes to the interested gateways, effects (the outbox). Nothing derived from an
entity's state leaves the host before the records it depends on are committed. A failed commit
evicts the entity (its memory is ahead of the store); an unknown outcome also sends a Gap to every
interested gateway.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from actors.slot import Sink, Slot
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import Gap, Reply
from storage.base import Append, Record

log = logging.getLogger("syncopate.host")


@dataclass
class Pending:
    slot: Slot
    sink: Sink
    reply: Reply
    entry: bytes | None = None           # the log entry to commit (None: nothing to persist)
    pushes: list = field(default_factory=list)       # Push items; gateways are chosen at release
    effects: list = field(default_factory=list)      # OutEffect
    interest: tuple | None = None        # ("+", ConnAddress) subscribe/follow, ("-", ConnAddress) unsubscribe
    resend: int | None = None            # answered from the op cache: re-send that version's effects
    included: bool = False               # its entry went into the store call of its batch


class GroupCommit:
    def _queue(self, p: Pending) -> None:
        p.slot.inflight += 1
        self._outstanding += 1
        self._pending.append(p)
        self._wake.set()

    # -- group commit and release ---------------------------------------------------------------
    async def _committer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                await self._commit(batch)

    async def _commit(self, batch: list[Pending]) -> None:
        appends: dict[str, Append] = {}
        slots: dict[str, Slot] = {}
        for p in batch:
            if p.entry is not None and not p.slot.dead:
                a = appends.get(p.slot.key)
                if a is None:
                    a = appends[p.slot.key] = Append(p.slot.key, p.slot.epoch, [])
                    slots[p.slot.key] = p.slot
                a.records.append(Record(p.reply.version, p.entry))
                p.included = True
        failed: dict[str, SyncopateError] = {}
        unknown = False
        if appends:
            items = list(appends.values())
            t0 = time.perf_counter()
            try:
                # The one await of the write path. Commands keep arriving and being handled while
                # it runs; their outcomes wait in self._pending for the next batch.
                results = await self.store.append(items)
            except Exception as exc:
                # Not a per-item refusal: the transaction may or may not have committed (a timeout
                # during COMMIT). Fail the outcomes (retryable: a retry is answered from the log if
                # it did commit), and tell the interested gateways their subscribers may have a gap.
                log.warning("store append raised (%s): outcome unknown", exc)
                unknown = True
                self.metrics.unknown_commits += 1
                err = exc if isinstance(exc, SyncopateError) else SyncopateError(ErrorCode.STORE_UNAVAILABLE, str(exc))
                results = [err] * len(items)
            self.metrics.record_commit(time.perf_counter() - t0, sum(len(a.records) for a in items))
            for a, res in zip(items, results):
                if res is None:
                    self.metrics.committed_entries += len(a.records)
                    slots[a.key].committed = max(slots[a.key].committed, a.records[-1].seq)
                else:
                    failed[a.key] = res
        gapped: dict[str, set[str]] = {}
        for p in batch:
            p.slot.inflight -= 1
            self._outstanding -= 1
            err = failed.get(p.slot.key)
            if err is None and p.slot.dead and not (p.included and p.entry is not None):
                # Evicted after it was handled: a read (or a write left out of the append) may reflect
                # in-memory state the store never got. A committed write is released below.
                err = SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"{p.slot.key} was evicted; retry")
            elif err is None and not p.slot.phantom and not (p.included and p.entry is not None) \
                    and not self.lease_ok():
                # Fenced read: the lease lapsed while this answer waited for its batch; a new owner
                # may have written since. A committed write was acknowledged by the store: released.
                err = SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"{p.slot.key}: the host's lease lapsed; retry")
            if err is not None:
                if unknown and p.slot.key in failed:
                    # the gateways of connection-addressed pushes too: they may have no interest entry
                    gapped.setdefault(p.slot.key, set()).update(
                        push.conn.gateway for push in p.pushes if push.conn is not None)
                self._evict(p.slot)
                p.sink(Reply.fail(err))
                continue
            if p.interest is not None:
                sign, addr = p.interest
                if sign == "+":
                    self._add_interest(p.slot.key, addr)    # only a successful subscribe adds interest
                else:
                    self._drop_interest(p.slot.key, addr)
            p.sink(p.reply)
            for push in p.pushes:
                if push.conn is not None:
                    self._deliver(push.conn.gateway, [push])
                else:
                    if push.fresh:
                        # chain the subscribers' pushes: each names the version before it, so a
                        # gateway whose member saw less knows it missed one (gateway/subscriptions.py)
                        push.prev, p.slot.pushed = p.slot.pushed, push.version
                    for gw in self.interest.get(push.key, ()):
                        self._deliver(gw, [push])
            for fx in p.effects:
                p.slot.outbox[fx.cmd.op_id] = fx
                self._send_effect(p.slot, fx)
            if p.effects and p.slot.dead:
                self._recover(p.slot)   # committed, but its slot is gone: the next activation sends them
            if p.resend is not None:
                # A retried op: whatever of its effects is still unacknowledged goes out again now.
                for fx in list(p.slot.outbox.values()):
                    if fx.version == p.resend and not fx.sending:
                        if fx.timer is not None:
                            fx.timer.cancel()
                            fx.timer = None
                        self._send_effect(p.slot, fx)
        for key, extra in gapped.items():
            slot = slots[key]
            for gw in set(self.interest.get(key, ())) | extra:
                self.metrics.gaps_sent += 1
                self._deliver(gw, [Gap(key, slot.committed)])
            # If it did commit, its effects are in the log: activate it again so they are sent.
            self._recover(slot)
        for key in {p.slot.key for p in batch if p.entry is not None}:
            slot = self.slots.get(key)
            if slot and slot.entity and not slot.dead and not slot.snapshotting \
                    and slot.committed - slot.snapshot_seq >= slot.entity.snapshot_every:
                # Compaction runs beside the committer, never in front of the next commit.
                slot.snapshotting = True
                self._spawn(self._snapshot(slot))

    def _evict(self, slot: Slot) -> None:
        if slot.dead:
            return
        slot.dead = True
        if self.slots.get(slot.key) is slot:
            del self.slots[slot.key]
        if any(fx.durable for fx in slot.outbox.values()):
            self._recover(slot)        # its unacknowledged effects are in the store: re-send from there
