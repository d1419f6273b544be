"""The consumer of the counts group: event bus -> durable counts, exactly once.

One step: take the entries a dead consumer left pending for CLAIM_IDLE_MS (claim, looked for at most
once a second), else new entries (read); apply them in ONE transaction of the counts store (events by key, plays counted once,
counts); then acknowledge them. The ack comes strictly after the commit:

  crash before the commit   nothing changed; the entries stay pending and are claimed again
  crash after the commit    the entries are claimed again and applied again: every event is
  (before the ack)          already recorded by its key, so nothing is counted twice

Several consumers (names) may run in one group; each entry is pending for one of them at a time.
`hooks` (tests) run at the two crash points: "received" (entries taken, nothing committed) and
"committed" (the transaction committed, not yet acknowledged); a hook that raises is a crash.
`lag` keeps the pipeline lag of every applied stream (commit time - the server's acceptance time)
for the benchmark.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from protocols.listening import ListeningEvent
from syncopate.events.bus import Delivery

log = logging.getLogger("syncopate.events")

CLAIM_IDLE_MS = 5_000          # an entry held this long without an ack: its consumer is presumed dead
CLAIM_EVERY_S = 1.0            # look for such entries at most this often (a claim is a transaction of its own)
BATCH = 500


class Consumer:
    def __init__(self, bus, counts, name: str = "c0", *, batch: int = BATCH, claim_idle_ms: int = CLAIM_IDLE_MS,
                 block_ms: int = 200, hooks: dict[str, Callable[[list[Delivery]], None]] | None = None,
                 keep_lag: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.bus, self.counts, self.name = bus, counts, name
        self.batch, self.claim_idle_ms, self.block_ms = batch, claim_idle_ms, block_ms
        self.hooks = hooks or {}
        self.clock = clock
        self.lag_ms: list[int] | None = [] if keep_lag else None
        self.applied = self.streams = self.duplicates = self.redelivered = 0
        self._stop = asyncio.Event()
        self._next_claim = 0.0

    def _hook(self, point: str, batch: list[Delivery]) -> None:
        fn = self.hooks.get(point)
        if fn is not None:
            fn(batch)

    async def step(self) -> int:
        """One batch; returns how many entries it handled (0: nothing to do within block_ms)."""
        batch = []
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + min(CLAIM_EVERY_S, self.claim_idle_ms / 2000)
            batch = await self.bus.claim(self.name, self.claim_idle_ms, self.batch)
        if not batch:
            batch = await self.bus.read(self.name, self.batch, self.block_ms)
        if not batch:
            return 0
        self.redelivered += sum(1 for d in batch if d.deliveries > 1)
        self._hook("received", batch)
        events = [ListeningEvent.from_wire(d.event) for d in batch]
        res = await self.counts.apply(events)
        # Committed. A crash from here to the ack redelivers the batch; applying it again is a no-op.
        now = int(self.clock() * 1000)
        if self.lag_ms is not None:
            self.lag_ms.extend(now - e.received_ms for e in events)
        self.applied += res.events
        self.streams += res.streams
        self.duplicates += res.duplicates
        self._hook("committed", batch)
        await self.bus.ack([d.id for d in batch])
        return len(batch)

    async def run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                await self.step()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The store or the bus refused: the entries stay pending (claimed again later).
                log.warning("events consumer %s: %s; retrying in %.2fs", self.name, exc, backoff)
                try:
                    await asyncio.wait_for(self._stop.wait(), backoff)
                except asyncio.TimeoutError:
                    pass
                backoff = min(backoff * 2, 5.0)

    def stop(self) -> None:
        self._stop.set()

    async def drain(self, timeout: float = 30.0) -> None:
        """Apply until nothing is pending or new (tests, the benchmark, reconcile --drain)."""
        deadline = time.monotonic() + timeout
        while True:
            n = await self.step()
            if n == 0 and await self.bus.pending() == 0 and await self.bus.backlog() == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the events consumer did not drain")
