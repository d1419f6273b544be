"""Membership, placement over the view, host leases and fenced handoff (EntityHosts on one store)."""
from __future__ import annotations

import asyncio
import time

import pytest

from actors.entity import Command, Env, Principal
from actors.host import EntityHost
from actors.membership import Holder, join, remove, route
from actors.placement import owner, owner_among
from protocols.errors import ErrorCode, SyncopateError
from gateway.cluster_view import ClusterView
from storage.base import Dropped, Membership
from storage.memory import MemoryStore
from tests.toy import Counter

USER = Principal("alice")
KEYS = [f"playlist:{i}" for i in range(4000)]


def add(eid, n, op_id=None):
    return Command("counter", eid, "add", {"n": n}, USER, op_id=op_id)


def get(eid):
    return Command("counter", eid, "get", {}, USER)


# -- placement ---------------------------------------------------------------------------------
def test_removing_a_slot_moves_only_its_keys():
    before = {k: owner_among(k, range(5)) for k in KEYS}
    after = {k: owner_among(k, [0, 1, 3, 4]) for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert moved and all(before[k] == 2 for k in moved)
    assert len(moved) == sum(1 for k in KEYS if before[k] == 2)


def test_adding_a_slot_moves_about_one_in_n():
    before = {k: owner_among(k, range(4)) for k in KEYS}
    after = {k: owner_among(k, range(5)) for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == 4 for k in moved)              # only to the new slot
    assert 0.15 < len(moved) / len(KEYS) < 0.25           # ~1/5


def test_a_full_view_places_as_the_fixed_slots_did():
    # Existing deployments keep their placement: every slot of 0..N-1 live == the old owner(key, N).
    assert all(owner_among(k, range(3)) == owner(k, 3) for k in KEYS[:500])
    assert route("playlist:1", None, 3) == owner("playlist:1", 3)


def test_holder_ids_round_trip():
    h = Holder("s1a2b", 3, "abcdef", 2)
    assert Holder.parse(str(h)) == h


# -- the membership view -------------------------------------------------------------------------
async def test_join_and_remove_bump_the_epoch_and_respect_the_process():
    store = MemoryStore()
    old, new = Holder("d", 0, "inc1"), Holder("d", 0, "inc2")
    await store.open_lease(str(old), 30)
    v1 = await join(store, "d", old)
    v2 = await join(store, "d", Holder("d", 1, "x"))
    assert (v1.epoch, v2.epoch, v2.slots) == (1, 2, (0, 1))
    v3 = await join(store, "d", new)                        # Ray restarted slot 0: the new process
    assert v3.epoch == 3 and v3.members[0] == str(new)
    # A gateway that saw the old process die must not remove the one that replaced it.
    assert (await remove(store, "d", 0, "inc1")).epoch == 3
    v4 = await remove(store, "d", 0, "inc2")
    assert v4.epoch == 4 and v4.slots == (1,)
    assert not await store.renew_lease(str(new), 30)        # revoked with its removal


# -- hosts on one store ------------------------------------------------------------------------------
async def leased_host(store, name, slot, *, lease_s=0.6, renew_s=0.1, acquire_wait_s=None) -> EntityHost:
    h = EntityHost(f"{name}-{slot}", store, {"counter": Counter}, Env(), idle_timeout_s=3600)
    h.join_membership(name, slot, lease_s=lease_s, renew_s=renew_s)
    if acquire_wait_s is not None:
        h.acquire_wait_s = acquire_wait_s
    await h.start()
    return h


async def wait_for(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_handoff_on_join_moves_entities_with_no_stale_read():
    store = MemoryStore()
    h0 = await leased_host(store, "d", 0)
    try:
        ids = [f"c{i}" for i in range(24)]
        for i, eid in enumerate(ids):
            await h0.call(add(eid, i + 1, op_id=f"w{i}"))
        h1 = await leased_host(store, "d", 1)          # joins: the view now has two slots
        try:
            await wait_for(lambda: h0.view.epoch == h1.view.epoch == 2, what="both hosts on epoch 2")
            mine1 = [e for e in ids if owner_among(f"counter:{e}", (0, 1)) == 1]
            assert mine1
            await wait_for(lambda: not any(f"counter:{e}" in h0.slots for e in mine1), what="handoff")
            assert h0.metrics.handoffs == len(mine1)
            for i, eid in enumerate(ids):
                owner_host, other = (h1, h0) if eid in mine1 else (h0, h1)
                reply, _ = await owner_host.call(add(eid, 100, op_id=f"x{i}"))
                assert reply["total"] == i + 1 + 100            # the new owner saw every earlier write
                with pytest.raises(SyncopateError) as exc:
                    await other.call(get(eid))                 # the other host never answers it
                assert exc.value.code == ErrorCode.NOT_OWNER
                # a retried op keeps its id: answered from the log, not applied twice
                again, _ = await owner_host.call(add(eid, 100, op_id=f"x{i}"))
                assert again["total"] == i + 1 + 100
        finally:
            await h1.close(passivate=False)
    finally:
        await h0.close(passivate=False)


async def test_a_deposed_owner_stops_answering_before_the_new_one_writes():
    """The old owner is alive but removed from the view and does not see the view (its poll is
    off): only its lease stops it. The new owner's write is acknowledged only after the old
    lease ran out, and by then the old owner refuses reads instead of serving its stale copy."""
    store = MemoryStore()
    h0 = await leased_host(store, "d", 0, renew_s=3600)      # renews only when the test says so
    h1 = await leased_host(store, "e", 0, acquire_wait_s=5.0)  # another deployment on the same store
    try:
        await h0.call(add("k", 1, op_id="a"))
        await h0.renew()
        await remove(store, "d", 0)                          # presumed dead: revoked, out of its view
        t0 = time.monotonic()
        reply, _ = await h1.call(add("k", 10, op_id="b"))    # waits for h0's lease to expire
        assert reply["total"] == 11
        assert time.monotonic() - t0 > 0.2                  # it did have to wait for the lease
        with pytest.raises(SyncopateError) as exc:
            await h0.call(get("k"))
        assert exc.value.code == ErrorCode.HOST_UNAVAILABLE
        assert "k" not in {s.entity_id for s in h0.slots.values() if not s.phantom}
        await h0.renew()                                     # learns it lost the lease: rejoins
        assert h0.lease_losses == 1 and h0.holder.generation == 1 and h0.lease_ok()
    finally:
        await h1.close(passivate=False)
        await h0.close(passivate=False)


async def test_two_deployments_on_one_store_never_serve_a_stale_read():
    store = MemoryStore()
    a = await leased_host(store, "d1", 0, acquire_wait_s=0.3)
    b = await leased_host(store, "d2", 0, acquire_wait_s=0.3)
    try:
        await a.call(add("k", 1, op_id="1"))
        with pytest.raises(SyncopateError) as exc:
            await b.call(get("k"))                           # a holds it under a live lease
        assert exc.value.code == ErrorCode.HOST_UNAVAILABLE
        assert await a.passivate_idle(now=time.time() + 7200) == 1    # passivated: released
        await wait_for(lambda: store._holders.get("counter:k") is None, what="release")
        reply, _ = await b.call(add("k", 2, op_id="2"))
        assert reply["total"] == 3
        for _ in range(3):                                   # a never answers from what it had
            with pytest.raises(SyncopateError) as exc:
                await a.call(get("k"))
            assert exc.value.code == ErrorCode.HOST_UNAVAILABLE
        assert (await b.call(get("k")))[0]["history"] == [1, 2]
    finally:
        await a.close(passivate=False)
        await b.close(passivate=False)


async def test_leave_hands_every_entity_to_the_remaining_host():
    store = MemoryStore()
    h0, h1 = await leased_host(store, "d", 0), await leased_host(store, "d", 1)
    try:
        await wait_for(lambda: h0.view.epoch == h1.view.epoch == 2, what="epoch 2")
        ids = [f"c{i}" for i in range(16)]
        for i, eid in enumerate(ids):
            host = h0 if owner_among(f"counter:{eid}", (0, 1)) == 0 else h1
            await host.call(add(eid, i, op_id=f"w{i}"))
        await h1.leave()
        assert not any(not s.phantom for s in h1.slots.values())
        await wait_for(lambda: h0.view.slots == (0,), what="h0 sees the view without slot 1")
        for i, eid in enumerate(ids):
            assert (await h0.call(get(eid)))[0]["history"] == [i]   # at once: released, no lease wait
    finally:
        await h1.close(passivate=False)
        await h0.close(passivate=False)


async def test_unleased_hosts_keep_the_old_behaviour():
    store = MemoryStore()
    h = EntityHost("h", store, {"counter": Counter}, Env())
    await h.start()
    try:
        assert not h.leased and h.lease_ok() and h.placed_here("counter:x") is None
        await h.call(add("x", 1))
        assert store._holders["counter:x"] is None
    finally:
        await h.close(passivate=False)


async def test_a_restarted_process_takes_the_slot_and_the_old_one_steps_down_for_good():
    """Ray restarted slot 0 while the old process still runs (it took it for dead): the new one
    joins, revoking the old one's lease; the old one drops what it holds and never rejoins."""
    store = MemoryStore()
    old = await leased_host(store, "d", 0, renew_s=3600)
    try:
        await old.call(add("k", 1, op_id="a"))
        new = await leased_host(store, "d", 0, acquire_wait_s=5.0)
        try:
            assert (await store.membership("d")).members[0] == str(new.holder)
            await old.renew()                       # refused (revoked), and the view names another process
            assert not old.lease_ok() and old._retired
            await old.renew()
            assert (await store.membership("d")).members[0] == str(new.holder)     # it did not rejoin
            reply, _ = await new.call(add("k", 2, op_id="b"))                      # after the old lease ran out
            assert reply["total"] == 3
            with pytest.raises(SyncopateError) as exc:
                await old.call(get("k"))
            assert exc.value.code == ErrorCode.HOST_UNAVAILABLE
        finally:
            await new.close(passivate=False)
    finally:
        await old.close(passivate=False)


class JoinDuringRemoval(MemoryStore):
    """A restarted process's join lands between a removal's read of the view and its
    compare-and-set: the interleaving of a gateway removing a dead host while Ray's restart of it
    joins (issue #13)."""

    def __init__(self) -> None:
        super().__init__()
        self.joining: Holder | None = None        # who joins ahead of the next change

    async def change_membership(self, name, expected_epoch, members):
        joining, self.joining = self.joining, None
        if joining is not None:                  # once, ahead of the first change (the removal's)
            await self.open_lease(str(joining), 30)
            await join(self, name, joining)
        return await super().change_membership(name, expected_epoch, members)


async def test_a_removal_that_loses_to_a_restarted_process_join_leaves_that_process_in():
    """The failure detector's verdict is about the process it saw (here without an incarnation,
    as from a gateway that never heard from the host): when its compare-and-set loses to the join
    of the process Ray restarted in the slot, the retry must not remove (and revoke) that live one."""
    old, new = Holder("d", 0, "inc1"), Holder("d", 0, "inc2")
    store = JoinDuringRemoval()
    await store.open_lease(str(old), 30)
    await join(store, "d", old)
    store.joining = new
    view = await remove(store, "d", 0, None)
    assert view.members == {0: str(new)}
    assert (await store.membership("d")).members == {0: str(new)}
    assert await store.renew_lease(str(new), 30)            # its lease was not revoked
    assert not await store.renew_lease(str(old), 30)        # the dead one's was


async def test_hosts_sweep_lease_rows_and_views_long_dead():
    """One lease row per host process and rejoin, one view per start: a host deletes those long
    dead (store.drop_dead), and nothing of a live deployment."""
    store = MemoryStore()
    await store.open_lease("old/0/x.0", 0.0)                 # a process of a deployment long gone
    await store.change_membership("old", 0, {0: "old/0/x.0"})
    h = EntityHost("d-0", store, {"counter": Counter}, Env(), idle_timeout_s=3600)
    h.join_membership("d", 0, lease_s=0.6, renew_s=0.1)
    h.sweep_every_s, h.dead_keep_s = 0.05, 0.0
    await h.start()
    try:
        await wait_for(lambda: h.swept == Dropped(1, 1), what="a sweep")
        assert await store.membership("old") == Membership(2, {})     # swept at 1: the floor above it
        assert (await store.membership("d")).members == {0: str(h.holder)}
        await h.call(add("x", 1))                             # its own lease still good
        assert h.lease_ok() and await store.renew_lease(str(h.holder), 0.6)
    finally:
        await h.close(passivate=False)


async def test_a_view_swept_while_its_hosts_were_cut_off_comes_back_newer_for_gateways_and_hosts():
    """The store was out of reach past the sweep bound: every host of a live deployment lost its
    lease, and a sweep deleted the view while the gateway kept its copy (epoch 3). The hosts rejoin
    a re-created row; its epochs must be newer than 3, or the gateway (and a host that rejoined
    before the others) ignores every later view: mis-routing, NOT_OWNER retries that never settle."""
    t = [1000.0]
    store = MemoryStore(clock=lambda: t[0])
    hosts = [await leased_host(store, "d", s, renew_s=3600) for s in range(3)]     # renewed by hand
    gateway = ClusterView(store, "d", poll_s=3600)                                 # refreshed by hand
    try:
        await gateway.start()
        before = gateway.view
        assert before.epoch == 3 and before.slots == (0, 1, 2)
        t[0] += 1000.0                                   # every lease ran out 1,000 s ago (store clock)
        assert await store.drop_dead(600.0) == Dropped(3, 1)
        for h in hosts:
            await h.renew()                              # refused: lost; rejoins under a new holder id
        after = await store.membership("d")
        assert after.members == {h.slot_index: str(h.holder) for h in hosts}
        assert all(h.holder.generation == 1 for h in hosts)
        assert await gateway.refresh() == after          # taken: newer than anything seen before
        assert after.epoch > before.epoch
        for h in hosts:
            assert await h.refresh_view() == after
    finally:
        await gateway.close()
        for h in hosts:
            await h.close(passivate=False)
