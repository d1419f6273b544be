"""The storage contract every backend implements.

An entity's durable history is an ordered log of records (seq 1, 2, 3, ...) plus at most one
snapshot that stands for every record up to its seq. Compaction = write a snapshot at seq N and
drop the records <= N, so the log never grows without bound.

Single writer, enforced here and not by the runtime: `acquire(key)` hands out a new epoch
(a fencing token) strictly greater than any before it; `append` and `write_snapshot` under any
other epoch than the current one are refused with STALE_EPOCH. A host that lost an entity
(crash, restart, rebalance) can therefore never overwrite the new owner's state, whatever Ray
believes about who is alive.

Erasure (`erase(key, epoch)`, user data rights, docs/data-rights.md): the owner removes every
record, the snapshot AND the owners row of `key`, so no byte naming the key is left. Fencing
survives it: the store keeps one global *epoch floor*, the greatest epoch ever erased, and hands a
key that has no owners row `floor + 1` on its next acquire(), so every epoch handed out after an
erase is greater than every epoch handed out before it, without remembering the key.

Rejected alternative: leases with expiry times. They need synchronised clocks and still let a
paused process write after its lease ran out; a fencing token checked inside the commit doesn't.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

from protocols.errors import ErrorCode, SyncopateError


@dataclass(frozen=True)
class Record:
    seq: int
    data: bytes


@dataclass(frozen=True)
class Snapshot:
    seq: int
    data: bytes


@dataclass
class Loaded:
    snapshot: Snapshot | None
    records: list[Record] = field(default_factory=list)     # seq > snapshot.seq, ascending

    @property
    def last_seq(self) -> int:
        if self.records:
            return self.records[-1].seq
        return self.snapshot.seq if self.snapshot else 0


@dataclass
class Append:
    key: str
    epoch: int
    records: list[Record]


def stale(key: str, epoch: int, current: int | None) -> SyncopateError:
    return SyncopateError(ErrorCode.STALE_EPOCH, f"{key}: epoch {epoch} is not the owner (current {current})")


def unavailable(backend: str, exc: BaseException) -> SyncopateError:
    return SyncopateError(ErrorCode.STORE_UNAVAILABLE, f"{backend}: {type(exc).__name__}: {exc}")


class Store(abc.ABC):
    """Async checkpoint store. Every method is safe to call from one event loop concurrently."""

    name: str = "store"
    durable: bool = True             # may a change be acknowledged once committed here?

    async def start(self) -> None:
        """Connect, and create or upgrade the schema."""

    async def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    async def acquire(self, key: str) -> int:
        """Become the owner of `key`: returns a new epoch, greater than every epoch handed out before."""

    @abc.abstractmethod
    async def load(self, key: str) -> Loaded:
        """The latest snapshot and every record after it."""

    @abc.abstractmethod
    async def append(self, batch: list[Append]) -> list[SyncopateError | None]:
        """Commit every append in `batch` in one transaction (group commit).

        Returns, per item, None (committed) or the refusal (STALE_EPOCH) for that item alone; a
        refused item leaves nothing behind. Raises STORE_UNAVAILABLE when nothing was committed.
        When this returns, the committed records are durable (fsync'd) in a durable store.
        """

    @abc.abstractmethod
    async def write_snapshot(self, key: str, epoch: int, snapshot: Snapshot) -> None:
        """Store `snapshot` and drop the records it covers. Refused (STALE_EPOCH) for a non-owner.
        An older snapshot than the stored one is ignored."""

    @abc.abstractmethod
    async def erase(self, key: str, epoch: int) -> bool:
        """Remove every record, the snapshot and the owners row of `key`, in one transaction, and
        raise the epoch floor to `epoch` (see the module docstring). Refused (STALE_EPOCH) for a
        non-owner; a key with no owners row has nothing stored and is left as it is (idempotent:
        False). True when something was erased. Deleted bytes are overwritten where the backend
        allows it (SQLite secure_delete, docs/data-rights.md)."""

    async def purge(self) -> None:
        """Make deleted bytes unreadable where the backend keeps old page images beside its live
        data (SQLite: checkpoint the WAL and truncate it). Called after an erase or a compaction
        that forgets a user (actors/maintenance.py); a no-op elsewhere (docs/data-rights.md)."""

    async def ping(self) -> bool:
        """Health: True when the backend answers."""
        return True
