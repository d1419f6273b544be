"""Residency: which entities stay in memory. Snapshots (compaction), passivation (idle timeout, the
active-entity and memory budgets, least recently used first) and the entities' ticks.

Part of EntityHost (a mixin over its state: self.slots, self._ticks, self.store, self.metrics,
self.max_active, self.max_memory, self.idle_timeout_s, self.clock).
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import time

from actors.entity import Command
from actors.slot import TICK, Slot, pack
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import command_to_wire
from storage.base import Snapshot

log = logging.getLogger("syncopate.host")

IDLE_SCAN_CHUNK = 256            # passivate_idle: entities visited between loop turns


def _no_answer(reply) -> None:
    """A tick's sink: nobody waits for its answer."""


class Residency:
    # -- snapshots -------------------------------------------------------------------------------
    async def _snapshot(self, slot: Slot) -> bool:
        """Write a snapshot of the committed state. Only committed state may be snapshotted: when
        uncommitted outcomes are in flight the in-memory entity is ahead of the log, so wait for
        them (the snapshot would otherwise claim records that may still fail)."""
        try:
            while not slot.dead and slot.entity is not None and slot.committed != slot.entity.version:
                await asyncio.sleep(0.001)
            if slot.dead or slot.entity is None or slot.phantom:
                return False
            entity = slot.entity
            seq = entity.version
            data = pack({"state": entity.snapshot(),
                         "ops": slot.ops.rows(),
                         # the unacknowledged effects: the log entries that carried them are dropped
                         "outbox": [[fx.version, command_to_wire(fx.cmd)] for fx in slot.outbox.values()
                                    if fx.version <= seq]})
            try:
                await self.store.write_snapshot(slot.key, slot.epoch, Snapshot(seq, data))
            except SyncopateError as err:
                if err.code == ErrorCode.STALE_EPOCH:
                    self._evict(slot)
                log.warning("snapshot of %s failed: %s", slot.key, err)
                return False
            slot.snapshot_seq = max(slot.snapshot_seq, seq)
            return True
        finally:
            slot.snapshotting = False

    # -- passivation and ticks -----------------------------------------------------------------------
    def _passivable(self, slot: Slot) -> bool:
        return not (slot.entity is None or slot.mailbox or slot.inflight or slot.draining or slot.dead
                    or slot.snapshotting)

    async def _passivate(self, slot: Slot, *, closing: bool = False) -> bool:
        if not self._passivable(slot):
            return False
        if slot.outbox and not closing:
            return False              # effects still on their way: they need this slot to retry
        if slot.committed > slot.snapshot_seq and not await self._snapshot(slot):
            return False
        if slot.mailbox or slot.inflight or slot.draining:   # a command arrived during the snapshot
            return False
        if self.slots.get(slot.key) is slot:
            del self.slots[slot.key]
        self._released(slot)                 # leased: give it up, the next owner need not wait
        self.metrics.passivations += 1
        return True

    async def passivate_idle(self, now: float | None = None) -> int:
        """Passivate the entities unused for idle_timeout_s that say they are idle. `self.slots` is
        in order of last use (enqueue moves a key to the end as it sets last_used), so the walk
        stops at the first entity used more recently than that: what it visits is the stale
        prefix, not every entity held. It did visit every one, and at 10,000 sessions the walk was
        10-25 ms of the host's loop every sweep, which the pushes in flight waited out
        (docs/performance.md, 2026-12-06). The prefix is found in one pass (a comparison a slot, no
        await), then its entities are asked and passivated in chunks of IDLE_SCAN_CHUNK with a loop
        turn between them, so an entity refusing (a session with connections) costs a visit, not a
        stall. Where nearly every slot is stale (an idle timeout shorter than the traffic's period)
        that one pass is still a walk of them all: 5-11 ms of CPU at 10,000 sessions."""
        now = self.clock() if now is None else now
        stale = []
        for slot in self.slots.values():        # no await in this loop: the dict does not change under it
            if now - slot.last_used < self.idle_timeout_s:
                break
            stale.append(slot)
        n = 0
        for i, slot in enumerate(stale):
            if i and i % IDLE_SCAN_CHUNK == 0:
                await asyncio.sleep(0)         # a loop turn: commands and replies waiting go first
            if slot.entity is not None and now - slot.last_used >= self.idle_timeout_s and slot.entity.idle():
                n += await self._passivate(slot)
        return n

    def _shed(self, excess: int | None = None) -> None:
        """Over MAX_ACTIVE (or the memory budget: `excess` given): passivate least recently used idle
        entities (in the background: each one writes its snapshot first). Entities with work in
        flight, outboxes, or that refuse (idle()) stay."""
        if self._shedding or self._closed:
            return
        if excess is None:
            excess = len(self.slots) - self.max_active + 1
        victims = []
        for slot in self.slots.values():          # least recently used first
            if len(victims) >= max(excess, 1) + 16:
                break
            if self._passivable(slot) and not slot.outbox and slot.entity.idle():
                victims.append(slot)
        if not victims:
            return
        self._shedding = True

        async def run() -> None:
            try:
                for slot in victims:
                    if await self._passivate(slot):
                        self.metrics.budget_passivations += 1
            finally:
                self._shedding = False

        self._spawn(run())

    def run_ticks(self, now: float | None = None) -> None:
        """Queue a tick for every entity whose tick is due (a heap of deadlines: O(due), not O(active))."""
        now = self.clock() if now is None else now
        while self._ticks and self._ticks[0][0] <= now:
            _, key, sid = heapq.heappop(self._ticks)
            slot = self.slots.get(key)
            if slot is None or id(slot) != sid or slot.dead or slot.entity is None or slot.phantom:
                continue                       # passivated or evicted since: its heap entry lapses
            slot.next_tick = now + slot.entity.tick_ms / 1000
            heapq.heappush(self._ticks, (slot.next_tick, key, sid))
            slot.mailbox.append((Command(slot.kind, slot.entity_id, TICK), _no_answer))
            if not slot.draining:
                slot.draining = True
                # handled here, as enqueue(now=True) handles a gateway's command, not by a task per
                # tick (a W2 host ticks each of its groups once a second, two ticks per command)
                self._drain_now(slot)

    async def _housekeeping(self) -> None:
        sweep_every = max(0.5, min(30.0, self.idle_timeout_s / 4))
        next_sweep = self.clock() + sweep_every
        while True:
            # Every 10 ms: ticks fall due spread over time, so each turn runs a few of them, never
            # a burst of every active device group at once (which delayed commands by tens of ms).
            await asyncio.sleep(0.01)
            try:
                self.run_ticks()
                if len(self.slots) > self.max_active:
                    self._shed()
                elif self.max_memory is not None and self._memory is not None \
                        and time.monotonic() >= self._next_memory_check:
                    self._next_memory_check = time.monotonic() + 1.0
                    if self._memory() > self.max_memory and self.slots:
                        self.metrics.budget_memory_over += 1
                        self._shed(max(1, len(self.slots) // 10))
                if self.clock() >= next_sweep:
                    next_sweep = self.clock() + sweep_every
                    await self.passivate_idle()
            except Exception:
                log.exception("housekeeping failed")
