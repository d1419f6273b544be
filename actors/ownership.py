"""Ownership: the host's lease, its place in the membership view, and the handoff of entities.

Part of EntityHost (a mixin over its state: self.slots, self.store, self._spawn, self._evict,
self._passivate, self._passivable). Off unless `join_membership(name, slot)` is called before
start() (the Ray and in-process servers do; unit tests of the write path need not): then

* **Lease.** The host opens one lease in the store under its holder id and renews it every
  `renew_s`, one round trip however many entities it holds. It acquires entities *as that holder*:
  the store refuses while another holder's lease on the key is live and the key was not released,
  and the activation waits (commands stay in the mailbox) until it is. The host counts its lease
  valid until `lease_s` (less a margin for clock rate) after it *sent* the last renewal that
  succeeded, which is before the store can count it expired: so while it answers, nobody else can
  have taken an entity it holds. When the lease lapses (renewal refused: revoked or expired; or the
  store unreachable past the validity) every owned entity is dropped at once and the host rejoins
  under a new holder id.
* **Fenced reads.** A command on an owned entity is handled only while the lease is valid, and a
  reply that carries no committed write is released only while it still is (commit.py); a
  STALE_EPOCH on a write evicts the entity (commit.py). Phantoms (nothing stored) are read from the
  store on each activation and need no lease.
* **Sweep.** Every host, about once a minute, deletes lease rows that ran out more than
  `DEAD_KEEP_S` ago and the views of deployments none of whose members has a lease row left
  (store.drop_dead): never a live holder's row, and an acquire decides as it did.
* **Placement.** The host polls the view with its renewal. A command for a key the view places on
  another slot is refused NOT_OWNER (not run; the gateway retries it at the owner), and every
  entity the new view places elsewhere is handed off: once its mailbox and in-flight work are
  done, it is snapshotted and *released* in the store, so the new owner takes it at once instead of
  waiting for a lease to expire. Until then this host still holds it and answers it (correctly:
  nobody else can have it).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time

from actors.membership import Holder, Routes, join, remove
from actors.slot import Slot
from protocols.errors import ErrorCode, SyncopateError
from storage.base import Dropped, LeaseHeld, Membership

log = logging.getLogger("syncopate.host")

LEASE_S = 2.0                 # a host's lease; a dead host's entities are taken over within this of its last renewal
RENEW_S = 0.4                 # renewal (and view poll) period
DRIFT = 0.05                  # of the lease: slack for the host's clock running faster than the store's
ACQUIRE_WAIT_S = 3 * LEASE_S  # an activation waits this long for another holder's lease, then fails retryably
DEAD_KEEP_S = 600.0           # a lease row is deleted this long after it ran out (and a view left with no member's row)
SWEEP_EVERY_S = 60.0          # each host sweeps them about this often (jittered)


def not_owner(key: str, slot: int) -> SyncopateError:
    return SyncopateError(ErrorCode.NOT_OWNER, f"{key} is placed on host {slot} now; retry")


class Ownership:
    def _init_ownership(self) -> None:
        self.membership_name: str | None = None
        self.slot_index: int | None = None
        self.holder: Holder | None = None
        self.view = Membership()
        self._routes = Routes()              # key -> owning slot under self.view
        self.lease_s, self.renew_s = LEASE_S, RENEW_S
        self.acquire_wait_s = ACQUIRE_WAIT_S
        self._valid_until = 0.0                  # monotonic: the lease counts as held before this
        self._leaving = False
        self._retired = False                    # another process took this slot: never rejoin
        self._handing_off: set[str] = set()
        self.lease_losses = 0
        self.sweep_every_s, self.dead_keep_s = SWEEP_EVERY_S, DEAD_KEEP_S
        self.swept = Dropped()                   # what this host's sweeps deleted, in all

    def join_membership(self, name: str, slot: int, *, lease_s: float = LEASE_S, renew_s: float = RENEW_S) -> None:
        """Before start(): hold entities under a lease, and take part in deployment `name`'s view."""
        self.membership_name, self.slot_index = name, slot
        self.lease_s, self.renew_s = lease_s, renew_s
        self.acquire_wait_s = 3 * lease_s
        self.holder = Holder(name, slot, self.incarnation, 0)

    @property
    def leased(self) -> bool:
        return self.membership_name is not None

    def lease_ok(self) -> bool:
        return not self.leased or time.monotonic() < self._valid_until

    def placed_here(self, key: str) -> int | None:
        """None when `key` belongs here; else the slot the view places it on."""
        if not self.leased or not self.view.members:
            return None
        if self._leaving:
            return -1
        slot = self._routes.owner(key, self.view, 0)      # members is not empty: the view decides
        return None if slot == self.slot_index else slot

    # -- lease and view -------------------------------------------------------------------------
    async def _start_ownership(self) -> None:
        if not self.leased:
            return
        await self._open_lease()
        self._tasks.append(asyncio.create_task(self._ownership_loop(), name=f"{self.host_id}-lease"))
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name=f"{self.host_id}-sweep"))

    async def _open_lease(self) -> None:
        sent = time.monotonic()
        if not await self.store.open_lease(str(self.holder), self.lease_s):
            raise SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"lease {self.holder} was revoked")
        self._valid_until = sent + self.lease_s * (1 - DRIFT)
        self._apply_view(await join(self.store, self.membership_name, self.holder))

    async def _ownership_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.renew_s)
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: lease renewal failed (%s)", self.host_id, exc)
                if not self.lease_ok():
                    self._lease_lost("the store did not answer in time")

    async def _sweep_loop(self) -> None:
        """Delete lease rows long run out, and the views of deployments whose every member's row
        is gone (store.drop_dead: one row per host process and rejoin, one view per start, would
        grow for ever). Any host may: it never touches a live holder's row. Its own task, so a
        slow sweep never delays a renewal; jittered, so hosts started together spread out."""
        while not self._closed:
            await asyncio.sleep(self.sweep_every_s * random.uniform(0.5, 1.5))
            try:
                got = await self.store.drop_dead(self.dead_keep_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: sweeping dead leases failed (%s)", self.host_id, exc)
                continue
            self.swept = Dropped(self.swept.leases + got.leases, self.swept.views + got.views)
            if got.leases or got.views:
                log.info("%s: dropped %d dead leases, %d dead views", self.host_id, got.leases, got.views)

    async def renew(self) -> None:
        """One renewal round: extend the lease (or learn it is lost), then read the view."""
        if self._retired:
            return
        if not self.lease_ok():
            self._lease_lost("it lapsed")
        elif self._valid_until > 0:
            sent = time.monotonic()
            if await self.store.renew_lease(str(self.holder), self.lease_s):
                self._valid_until = sent + self.lease_s * (1 - DRIFT)
            else:
                self._lease_lost("the store refused its renewal")
        if self._leaving:
            return                      # handing off: keep the lease, never rejoin
        if self._valid_until == 0:
            view = await self.store.membership(self.membership_name)
            other = view.members.get(self.slot_index)
            if other is not None and Holder.parse(other).incarnation != self.incarnation:
                # Ray started another process in this slot (it took us for dead): it has the slot;
                # rejoining would take it back from a live process. Step down for good.
                self._retired = True
                self._apply_view(view)
                return
            # Lost: rejoin as a new holder (a new lease; the view gets this slot back).
            self.holder = Holder(self.holder.name, self.holder.slot, self.holder.incarnation,
                                 self.holder.generation + 1)
            await self._open_lease()
            return
        view = await self.store.membership(self.membership_name)
        if view.epoch != self.view.epoch:
            self._apply_view(view)

    def _lease_lost(self, why: str) -> None:
        """Deposed: drop every owned entity at once (its memory may be behind a new owner's)."""
        if self._valid_until == 0:
            return
        log.warning("%s: lease %s lost (%s): dropping %d entities", self.host_id, self.holder, why,
                    sum(1 for s in self.slots.values() if not s.phantom))
        self.lease_losses += 1
        self._valid_until = 0.0
        for slot in list(self.slots.values()):
            if not slot.phantom and slot.entity is not None:
                self._evict(slot)

    def _apply_view(self, view: Membership) -> None:
        if view.epoch <= self.view.epoch and self.view.members:
            return
        self.view = view
        other = view.members.get(self.slot_index)
        if self.holder is not None and other is not None and Holder.parse(other).incarnation != self.incarnation:
            # Ray started another process in this slot (it took us for dead): step down for good.
            self._lease_lost(f"{other} serves this slot now")
            self._retired = True
        for slot in list(self.slots.values()):
            if self.placed_here(slot.key) is not None:
                self._hand_off(slot)

    async def refresh_view(self) -> Membership:
        if self.leased:
            self._apply_view(await self.store.membership(self.membership_name))
        return self.view

    # -- acquire, release, handoff -----------------------------------------------------------------
    async def _acquire(self, key: str) -> int:
        """The entity's epoch, under this host's lease (waiting for another holder's to end)."""
        if not self.leased:
            return await self.store.acquire(key)
        deadline = time.monotonic() + self.acquire_wait_s
        delay = 0.02
        while True:
            if not self.lease_ok():
                raise SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"{self.host_id} holds no lease; retry")
            try:
                return await self.store.acquire(key, str(self.holder))
            except LeaseHeld:
                if time.monotonic() + delay > deadline:
                    raise
            # Polling the store: the other holder's lease expires (or it releases) in another
            # process; there is nothing here to wait on.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _released(self, slot: Slot) -> None:
        """A passivated entity: give it up in the store (best effort; the lease covers a failure)."""
        if not self.leased or slot.phantom or not slot.epoch or self.holder is None:
            return

        async def run(holder=str(self.holder)) -> None:
            try:
                await self.store.release(slot.key, slot.epoch, holder)
            except SyncopateError as exc:
                log.warning("release of %s failed (%s): its lease will expire", slot.key, exc)

        self._spawn(run())

    def _hand_off(self, slot: Slot) -> None:
        """Placed elsewhere now: passivate (snapshot, release) once its work in flight is done."""
        if slot.key in self._handing_off or slot.phantom:
            return
        self._handing_off.add(slot.key)

        async def run() -> None:
            try:
                deadline = time.monotonic() + 30.0
                while self.slots.get(slot.key) is slot and not slot.dead and time.monotonic() < deadline:
                    if self._passivable(slot) and await self._passivate(slot, closing=True):
                        self.metrics.handoffs += 1
                        return
                    # Its mailbox (accepted before the view changed) and commits drain first.
                    await asyncio.sleep(0.005)
            finally:
                self._handing_off.discard(slot.key)

        self._spawn(run())

    async def leave(self) -> None:
        """Leave on purpose (`syncopate hosts remove`): out of the view, hand every entity off."""
        if not self.leased:
            return
        self._leaving = True
        # Out of the view first (gateways stop sending here), lease kept: it must stay valid while
        # the entities are snapshotted and released; it is revoked after (close).
        self.view = await remove(self.store, self.membership_name, self.slot_index, self.incarnation, revoke=False)
        for slot in list(self.slots.values()):
            self._hand_off(slot)
        deadline = time.monotonic() + 30.0
        while any(not s.phantom and s.entity is not None for s in self.slots.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)      # each handoff is a snapshot and a release in the store
