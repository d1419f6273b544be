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

Writes are fenced by the epoch alone (a lease can't fence a paused process's late write; the token
checked inside the commit can). Reads are fenced by a *host lease* on top (actors/ownership.py; in
docs/architecture.md, "Membership, leases and handoff"): a host that passes `holder` to `acquire`
owns the entity only while its lease (one row per host process, renewed in one round trip per
period, however many entities it holds) is live, and nobody else can acquire the entity until that
lease has expired (the store's clock) or the holder released the entity. The host stops answering
before its lease can have expired (it counts from when it *sent* the renewal), so a read it answers
is never older than a write of a new owner. The store also keeps each deployment's membership view
(the live host slots, with an epoch of its own, changed by compare-and-set).

A view's epoch never goes back, even when drop_dead deletes its row (gateways and hosts take only a
newer epoch than the one they hold, and a deployment's hosts can all go without a lease past the
sweep's bound while its gateways keep running: the store was down). The store keeps one global
*view floor*, greater than every epoch of a view it ever deleted (raised in the sweep's
transaction, kept for ever, 0 until the first sweep); a deployment with no row reads as epoch
`floor` with no members, and its row is re-created at `floor + 1`.
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


@dataclass(frozen=True)
class Membership:
    """A deployment's membership view: which host slots are live, and which process (holder id,
    the one its lease is under) each is. Every change bumps `epoch` (compare-and-set)."""
    epoch: int = 0
    members: dict[int, str] = field(default_factory=dict)      # slot -> holder id

    @property
    def slots(self) -> tuple[int, ...]:
        return tuple(sorted(self.members))

    def to_json(self) -> str:
        import json
        return json.dumps(sorted([s, h] for s, h in self.members.items()))

    @staticmethod
    def from_row(epoch: int, members: str) -> "Membership":
        import json
        return Membership(int(epoch), {int(s): str(h) for s, h in json.loads(members)})


@dataclass(frozen=True)
class Dropped:
    """What drop_dead() deleted."""
    leases: int = 0
    views: int = 0


class LeaseHeld(SyncopateError):
    """acquire(key, holder) refused: another holder's lease on `key` is live (retry once it has
    expired or been released). Retryable, like HOST_UNAVAILABLE, if it ever reaches a client."""

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(ErrorCode.HOST_UNAVAILABLE, f"{key}: held by {holder} under a live lease; retry")
        self.key, self.holder = key, holder

    def __reduce__(self):  # stays a LeaseHeld across a pickle (storage/sqlite_process.py answers)
        return (LeaseHeld, (self.key, self.holder))


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

    def timing(self) -> dict:
        """Counters of the store's own view of its appends (measured where the store runs them);
        empty where the store keeps none."""
        return {}

    leases: bool = True              # implements holder leases and membership (the methods below)

    @abc.abstractmethod
    async def acquire(self, key: str, holder: str | None = None) -> int:
        """Become the owner of `key`: returns a new epoch, greater than every epoch handed out before.

        With `holder` (a host lease id, open_lease): refused with LeaseHeld while another holder's
        lease on the key is live and it has not released it; the key is then held by `holder`.
        Without: taken unconditionally and held by nobody (fencing only, no read lease)."""

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

    # -- host leases (read fencing) and the membership view ------------------------------------
    async def release(self, key: str, epoch: int, holder: str) -> bool:
        """The holder gives `key` up (passivated, handed off): the next acquire need not wait for
        its lease. Only while `epoch` is current and `holder` holds it; True if released."""
        raise _no_leases(self)

    async def open_lease(self, holder: str, lease_s: float) -> bool:
        """Start `holder`'s lease, live for `lease_s` from now (store clock). Holder ids are unique
        per host process; False if this one was revoked."""
        raise _no_leases(self)

    async def renew_lease(self, holder: str, lease_s: float) -> bool:
        """Extend a live lease to `lease_s` from now. False, and nothing changes, if it had already
        expired or was revoked: the holder has lost every key it held and must drop them."""
        raise _no_leases(self)

    async def revoke_lease(self, holder: str) -> None:
        """No more renewals for `holder` (it was removed from the membership): its lease runs out
        at the expiry it has, never earlier (a slow holder may still be answering until then)."""
        raise _no_leases(self)

    async def membership(self, name: str) -> Membership:
        """The current view of deployment `name`. With no row (never written, or deleted by
        drop_dead): epoch = the view floor (0 if no view was ever deleted), no members."""
        raise _no_leases(self)

    async def change_membership(self, name: str, expected_epoch: int, members: dict[int, str]) -> Membership | None:
        """Compare-and-set: the view becomes `members` at epoch expected + 1 if the current epoch is
        `expected_epoch` (a missing row's is the view floor: it is created iff expected == floor);
        None (nothing changed) if someone changed it first, or a sweep deleted it meanwhile."""
        raise _no_leases(self)

    async def drop_dead(self, older_than_s: float) -> Dropped:
        """Housekeeping, in one transaction: delete every lease row that ran out more than
        `older_than_s` ago (store clock; revoked or not), then the view of every deployment that
        has members and none of them with a lease row left (all dead that long: a stopped or
        crashed deployment, or one cut off from the store that long), raising the view floor to one
        above the greatest epoch deleted (never lowering it): a re-created view is newer than every
        epoch the deleted one had, and a compare-and-set computed against the deleted view (its
        epoch) is refused, not applied to the missing row. Never a live holder's row: a lease that
        ran out is never renewed (renew_lease refuses it), and acquire counts a missing row as not live, as it counted the
        expired one, so no acquire decides differently. A holder id whose row is gone must not be
        opened again (host holder ids never are: each process, each rejoin takes a new one)."""
        raise _no_leases(self)


def _no_leases(store: Store) -> SyncopateError:
    return SyncopateError(ErrorCode.INTERNAL, f"the {store.name} store keeps no leases or membership")
