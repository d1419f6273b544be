"""In-memory store: the fake for unit tests. It copies data in and out like a network would, so a
test that mutates what it stored (or what it loaded) can't pass by aliasing."""
from __future__ import annotations

import asyncio
import time

from protocols.errors import ErrorCode, SyncopateError
from storage.base import Append, Dropped, LeaseHeld, Loaded, Membership, Record, Snapshot, Store, stale


class MemoryStore(Store):
    name = "memory"
    durable = True   # stands in for a durable store in unit tests

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock                               # the store's clock (leases); tests move it
        self._epochs: dict[str, int] = {}
        self._holders: dict[str, str | None] = {}        # key -> holder id (None: unleased / released)
        self._leases: dict[str, list] = {}               # holder -> [until, revoked]
        self._views: dict[str, Membership] = {}
        self._records: dict[str, list[Record]] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self.commits = 0            # how many transactions append() ran: group commit is observable
        # Fault hooks for tests:
        self.fail_next: Exception | None = None          # the next append raises this, committing nothing
        self.fail_after_commit: Exception | None = None  # the next append commits, then raises this
        self.down = False                                # every call raises STORE_UNAVAILABLE
        self.acquired = 0                                # acquire() calls (owners rows written)
        self.epoch_floor = 0                             # the greatest epoch erased (storage.base)
        self.view_floor = 0                              # a swept view's epoch stands here (drop_dead)

    def _check_up(self) -> None:
        if self.down:
            raise SyncopateError(ErrorCode.STORE_UNAVAILABLE, "memory store is down (test hook)")

    def _live(self, holder: str | None) -> bool:
        lease = self._leases.get(holder) if holder else None
        return lease is not None and lease[0] > self.clock()

    async def acquire(self, key: str, holder: str | None = None) -> int:
        await asyncio.sleep(0)
        self._check_up()
        cur = self._holders.get(key)
        if holder is not None and cur is not None and cur != holder and self._live(cur):
            raise LeaseHeld(key, cur)
        self._holders[key] = holder
        self.acquired += 1
        self._epochs[key] = self._epochs.get(key, self.epoch_floor) + 1
        return self._epochs[key]

    async def load(self, key: str) -> Loaded:
        await asyncio.sleep(0)
        self._check_up()
        snap = self._snapshots.get(key)
        after = snap.seq if snap else 0
        recs = [Record(r.seq, bytes(r.data)) for r in self._records.get(key, []) if r.seq > after]
        return Loaded(Snapshot(snap.seq, bytes(snap.data)) if snap else None, recs)

    async def append(self, batch: list[Append]) -> list:
        await asyncio.sleep(0)
        self._check_up()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.commits += 1
        out: list = []
        for item in batch:
            cur = self._epochs.get(item.key)
            if cur != item.epoch:
                out.append(stale(item.key, item.epoch, cur))
                continue
            log = self._records.setdefault(item.key, [])
            last = log[-1].seq if log else (self._snapshots[item.key].seq if item.key in self._snapshots else 0)
            for r in item.records:
                if r.seq <= last:
                    raise ValueError(f"{item.key}: seq {r.seq} is not after {last}")
                last = r.seq
            log.extend(Record(r.seq, bytes(r.data)) for r in item.records)
            out.append(None)
        if self.fail_after_commit is not None:
            exc, self.fail_after_commit = self.fail_after_commit, None
            raise exc
        return out

    async def write_snapshot(self, key: str, epoch: int, snapshot: Snapshot) -> None:
        await asyncio.sleep(0)
        self._check_up()
        cur = self._epochs.get(key)
        if cur != epoch:
            raise stale(key, epoch, cur)
        old = self._snapshots.get(key)
        if old and old.seq >= snapshot.seq:
            return
        self._snapshots[key] = Snapshot(snapshot.seq, bytes(snapshot.data))
        self._records[key] = [r for r in self._records.get(key, []) if r.seq > snapshot.seq]

    async def release(self, key: str, epoch: int, holder: str) -> bool:
        await asyncio.sleep(0)
        self._check_up()
        if self._epochs.get(key) == epoch and self._holders.get(key) == holder:
            self._holders[key] = None
            return True
        return False

    async def open_lease(self, holder: str, lease_s: float) -> bool:
        await asyncio.sleep(0)
        self._check_up()
        lease = self._leases.setdefault(holder, [0.0, False])
        if lease[1]:
            return False
        lease[0] = self.clock() + lease_s
        return True

    async def renew_lease(self, holder: str, lease_s: float) -> bool:
        await asyncio.sleep(0)
        self._check_up()
        lease = self._leases.get(holder)
        if lease is None or lease[1] or lease[0] <= self.clock():
            return False
        lease[0] = self.clock() + lease_s
        return True

    async def revoke_lease(self, holder: str) -> None:
        await asyncio.sleep(0)
        self._check_up()
        if holder in self._leases:
            self._leases[holder][1] = True

    async def membership(self, name: str) -> Membership:
        await asyncio.sleep(0)
        self._check_up()
        return self._views.get(name, Membership(self.view_floor))

    async def change_membership(self, name: str, expected_epoch: int, members: dict[int, str]) -> Membership | None:
        await asyncio.sleep(0)
        self._check_up()
        if self._views.get(name, Membership(self.view_floor)).epoch != expected_epoch:
            return None
        view = self._views[name] = Membership(expected_epoch + 1, dict(members))
        return view

    async def drop_dead(self, older_than_s: float) -> Dropped:
        await asyncio.sleep(0)
        self._check_up()
        before = self.clock() - older_than_s
        dead = [h for h, (until, _) in self._leases.items() if until < before]
        for h in dead:
            del self._leases[h]
        views = [n for n, v in self._views.items()
                 if v.members and not any(h in self._leases for h in v.members.values())]
        if views:
            self.view_floor = max(self.view_floor, 1 + max(self._views[n].epoch for n in views))
        for n in views:
            del self._views[n]
        return Dropped(len(dead), len(views))

    async def erase(self, key: str, epoch: int) -> bool:
        await asyncio.sleep(0)
        self._check_up()
        cur = self._epochs.get(key)
        if cur is None:
            return False
        if cur != epoch:
            raise stale(key, epoch, cur)
        del self._epochs[key]
        self._holders.pop(key, None)
        self._records.pop(key, None)
        self._snapshots.pop(key, None)
        self.epoch_floor = max(self.epoch_floor, epoch)
        return True

    def keys(self) -> set[str]:
        """Every key with something stored (tests scan for erased users)."""
        return set(self._epochs) | set(self._records) | set(self._snapshots)

    def record_count(self, key: str) -> int:
        return len(self._records.get(key, []))
