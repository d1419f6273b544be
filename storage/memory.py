"""In-memory store: the fake for unit tests. It copies data in and out like a network would, so a
test that mutates what it stored (or what it loaded) can't pass by aliasing."""
from __future__ import annotations

import asyncio

from protocols.errors import ErrorCode, SyncopateError
from storage.base import Append, Loaded, Record, Snapshot, Store, stale


class MemoryStore(Store):
    name = "memory"
    durable = True   # stands in for a durable store in unit tests

    def __init__(self) -> None:
        self._epochs: dict[str, int] = {}
        self._records: dict[str, list[Record]] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self.commits = 0            # how many transactions append() ran: group commit is observable
        # Fault hooks for tests:
        self.fail_next: Exception | None = None          # the next append raises this, committing nothing
        self.fail_after_commit: Exception | None = None  # the next append commits, then raises this
        self.down = False                                # every call raises STORE_UNAVAILABLE
        self.acquired = 0                                # acquire() calls (owners rows written)
        self.epoch_floor = 0                             # the greatest epoch erased (storage.base)

    def _check_up(self) -> None:
        if self.down:
            raise SyncopateError(ErrorCode.STORE_UNAVAILABLE, "memory store is down (test hook)")

    async def acquire(self, key: str) -> int:
        await asyncio.sleep(0)
        self._check_up()
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

    async def erase(self, key: str, epoch: int) -> bool:
        await asyncio.sleep(0)
        self._check_up()
        cur = self._epochs.get(key)
        if cur is None:
            return False
        if cur != epoch:
            raise stale(key, epoch, cur)
        del self._epochs[key]
        self._records.pop(key, None)
        self._snapshots.pop(key, None)
        self.epoch_floor = max(self.epoch_floor, epoch)
        return True

    def keys(self) -> set[str]:
        """Every key with something stored (tests scan for erased users)."""
        return set(self._epochs) | set(self._records) | set(self._snapshots)

    def record_count(self, key: str) -> int:
        return len(self._records.get(key, []))
