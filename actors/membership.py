"""The membership view: which host slots are live, agreed on through the store.

One row per deployment (`store.membership(name)`): the live slots, each with the holder id of the
process serving it (the id its host lease is under), and an epoch of its own that every change
bumps by compare-and-set. Placement (actors/placement.py) is a function of this view alone, so every
gateway and host that has read the same epoch routes every key to the same slot.

Who changes it:
  * a host joins when it starts (and again, under a new holder id, after it lost its lease);
  * a gateway removes a host it found dead (its stream broke and a short ping failed, or its pings
    time out), revoking that holder's lease at once so it can renew no more;
  * a host leaving on purpose (`syncopate hosts remove`) removes itself, then hands off.
Everyone else reads it: gateways and hosts poll the row (one small read a period) and re-route.

A view is advice for routing, never a licence to write: an entity moves only through the store's
fencing (epochs) and leases, so two parties with different views can cost a retry, never a stale
read or a lost write.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from actors.placement import owner, owner_among
from storage.base import Membership, Store

log = logging.getLogger("syncopate.membership")


@dataclass(frozen=True)
class Holder:
    """Who a host process is, in leases and the view: `<name>/<slot>/<incarnation>.<generation>`.
    A new generation is taken when the process lost its lease and rejoins."""
    name: str
    slot: int
    incarnation: str
    generation: int = 0

    def __str__(self) -> str:
        return f"{self.name}/{self.slot}/{self.incarnation}.{self.generation}"

    @staticmethod
    def parse(text: str) -> "Holder":
        name, slot, rest = text.rsplit("/", 2)
        inc, gen = rest.rsplit(".", 1)
        return Holder(name, int(slot), inc, int(gen))


def route(key: str, view: Membership | None, fallback_hosts: int) -> int:
    """The slot that owns `key` under `view`; before any host joined, the fixed slots."""
    if view is not None and view.members:
        return owner_among(key, view.members)
    return owner(key, fallback_hosts)


class Routes:
    """`route` remembered per view: a key's owner changes only with the view, and a view is replaced,
    never changed in place (every store answers a new Membership per read, a change is a new epoch),
    so each key is hashed once per view rather than once per command (two blake2b a key and slot
    were ~3 % of the gateway's CPU under W2). A new view object or host count forgets everything."""
    LIMIT = 200_000              # keys remembered at most; past it the memory starts over

    def __init__(self) -> None:
        self._view: Membership | None = None
        self._hosts = -1
        self._owner: dict[str, int] = {}

    def owner(self, key: str, view: Membership | None, fallback_hosts: int) -> int:
        if view is not self._view or fallback_hosts != self._hosts:
            self._view, self._hosts = view, fallback_hosts
            self._owner = {}
        slot = self._owner.get(key)
        if slot is None:
            slot = route(key, view, fallback_hosts)
            if len(self._owner) >= self.LIMIT:
                self._owner = {}
            self._owner[key] = slot
        return slot


async def join(store: Store, name: str, holder: Holder) -> Membership:
    """Put `holder` in the view at its slot (replacing an older process of that slot)."""
    while True:
        view = await store.membership(name)
        previous = view.members.get(holder.slot)
        if previous == str(holder):
            return view
        if previous is not None and Holder.parse(previous).incarnation != holder.incarnation:
            # A new process in the slot (Ray restarted it): the old one renews no more.
            await store.revoke_lease(previous)
        new = await store.change_membership(name, view.epoch, {**view.members, holder.slot: str(holder)})
        if new is not None:
            log.info("membership %s: slot %d joined (%s), epoch %d", name, holder.slot, holder, new.epoch)
            return new


async def remove(store: Store, name: str, slot: int, incarnation: str | None = None, *,
                 revoke: bool = True) -> Membership:
    """Take `slot` out of the view, if it is still the process `incarnation` (None: the one the
    first read finds there), and revoke that holder's lease: it renews no more, and its entities
    can be taken over when the lease it has runs out. A slot that rejoined meanwhile under another
    process is left alone."""
    while True:
        view = await store.membership(name)
        current = view.members.get(slot)
        if current is None or (incarnation is not None and Holder.parse(current).incarnation != incarnation):
            return view
        # The verdict is about one process. Pinned here, so that when the compare-and-set below
        # loses to a restarted process's join, the next round leaves that new process alone
        # instead of removing (and revoking) a live host that was never judged.
        incarnation = Holder.parse(current).incarnation
        # Revoke first: whatever happens next, that process can't extend its hold.
        if revoke:
            await store.revoke_lease(current)
        members = {s: h for s, h in view.members.items() if s != slot}
        new = await store.change_membership(name, view.epoch, members)
        if new is not None:
            log.warning("membership %s: slot %d removed (%s), epoch %d", name, slot, current, new.epoch)
            return new
