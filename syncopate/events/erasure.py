"""A user's erasure in the event pipeline (docs/data-rights.md): a step of the deletion
(gateway/erasure.py), run after the user's entities are erased, so no new event of theirs can be
published (the device group is the only publisher of a user's events, and its ERASE waited for its
outbox: their last events are on the bus).

  1. watermark   the bus's last entry now. Every event of the user is at or before it.
  2. drained     wait until the consumer group has acknowledged every entry up to the watermark:
                 it committed them (the ack comes after the commit). Before that, anonymising the
                 user's rows would let a late or redelivered event of theirs count a second time
                 (its key and play id would no longer be found).
  3. counts      the user's per-event rows anonymised in one transaction (syncopate/events/anonymise.py);
                 the per-track, per-day counts are not touched and reconcile still recounts them.
  4. bus         the user's entries removed from the bus (SQLite: their rows; Redis: the stream is
                 rebuilt without the entries up to the watermark, syncopate/events/stream_rebuild.py).

Every step is idempotent: a deletion that crashes between them is resumed by the registry's pending
record (gateway/data_rights.py) and runs them all again; on a resume, step 1 takes a new watermark
(later: still after every event of the user), step 3 finds no row of the user, step 4 no entry.
Waiting longer than DRAIN_TIMEOUT_S raises a retryable error: the deletion stays pending and is
resumed.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass
from typing import Callable

from protocols.errors import ErrorCode, SyncopateError

DRAIN_TIMEOUT_S = 60.0
POLL_S = 0.05


@dataclass
class PipelineErased:
    events_anonymised: int
    events_deleted: int
    plays_anonymised: int
    bus_entries_removed: int


class PipelineErasure:
    def __init__(self, bus, counts, *, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        self.bus, self.counts, self.drain_timeout_s = bus, counts, drain_timeout_s

    async def drained(self, watermark: str) -> None:
        """Until the group acknowledged every entry up to `watermark` (polled: the bus has no
        notification of acknowledgements across processes), within drain_timeout_s."""
        deadline = time.monotonic() + self.drain_timeout_s
        while not await self.bus.committed_through(watermark):
            if time.monotonic() > deadline:
                raise SyncopateError(ErrorCode.STORE_UNAVAILABLE,
                                     f"the events consumer has not applied the bus up to {watermark} yet")
            await asyncio.sleep(POLL_S)

    async def forget(self, user_id: str, anonymous_id: str,
                     step: Callable[[str], object] | None = None) -> PipelineErased:
        async def at(name: str) -> None:          # the deletion's fault hook (tests)
            if step is not None:
                r = step(name)
                if inspect.isawaitable(r):
                    await r
        watermark = await self.bus.tail()
        if watermark is not None:
            await at("pipeline:drain")
            await self.drained(watermark)
        # Every event of the user is committed in the counts store (or there never was one).
        await at("pipeline:counts")
        f = await self.counts.forget_user(user_id, anonymous_id)
        removed = 0
        if watermark is not None:
            # The rows are anonymised; the bus entries are all acknowledged, so none is delivered again.
            await at("pipeline:bus")
            removed = await self.bus.forget_user(user_id, watermark)
        return PipelineErased(f.anonymised, f.deleted, f.plays, removed)
