"""The gateway's copy of the membership view (actors/membership.py), and its failure detector's
one write: taking a dead host out of the view.

The view is read from the store every `poll_s` (one small read), and at once when poked: a host
answered NOT_OWNER (its view is newer than ours), or a host was removed. Every change is handed to
`on_change(before, after)`: the dispatcher re-sends what it parked, subscriptions whose owner
changed are moved to the new owner.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from actors import membership
from storage.base import Membership, Store

log = logging.getLogger("syncopate.gateway")


class ClusterView:
    def __init__(self, store: Store, name: str, *, poll_s: float = 0.25, own_store: bool = False) -> None:
        self.store, self.name, self.poll_s = store, name, poll_s
        self.own_store = own_store               # started and closed here (the Ray gateway's own store)
        self.view = Membership()
        self.on_change: Callable[[Membership, Membership], None] = lambda before, after: None
        self._poke = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.removals = 0

    async def start(self) -> None:
        if self.own_store:
            await self.store.start()
        self._apply(await self.store.membership(self.name))
        self._task = asyncio.create_task(self._poll(), name=f"view-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.own_store:
            await self.store.close()

    def poke(self) -> None:
        self._poke.set()

    def _apply(self, view: Membership) -> None:
        if view.epoch <= self.view.epoch:
            return
        before, self.view = self.view, view
        log.info("gateway view %s: epoch %d, slots %s", self.name, view.epoch, list(view.slots))
        self.on_change(before, view)

    async def refresh(self) -> Membership:
        self._apply(await self.store.membership(self.name))
        return self.view

    async def _poll(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.poll_s):
                    await self._poke.wait()
            except TimeoutError:
                pass
            self._poke.clear()
            try:
                async with asyncio.timeout(max(2.0, self.poll_s * 4)):
                    await self.refresh()
            except Exception as exc:
                log.warning("membership poll failed: %s", exc)

    async def remove(self, slot: int, incarnation: str | None) -> None:
        """The failure detector's verdict: `slot` (process `incarnation`) is gone."""
        if slot not in self.view.members:
            return
        self.removals += 1
        self._apply(await membership.remove(self.store, self.name, slot, incarnation))
