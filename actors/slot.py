"""The host's record of one entity (Slot), the internal ops the host queues for it, and the one
packing used for log entries and snapshots. Shared by the host's parts: actors/host.py (mailbox,
activation, handling), actors/commit.py (group commit and release), actors/outbox.py (effects),
actors/residency.py (snapshots, passivation, ticks).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack

from actors.entity import Entity
from actors.opcache import OpCache
from protocols.wire import Reply

TICK = "__tick__"
RECOVER = "__recover__"        # internal: activate the entity so its outbox is re-sent (unknown commit outcome)
UNSUBSCRIBE = "unsubscribe"
RELAY = "relay"                # system op: push {type, payload} to the entity's subscribers, store nothing

# A reply sink receives the Reply of one command, exactly once.
Sink = Callable[[Reply], None]

_PACKER = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    # one Packer, reused (packb builds one per call); the host packs on its event loop only
    try:
        return _PACKER.pack(obj)
    except BaseException:
        _PACKER.reset()
        raise


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass
class Slot:
    """One activated (or activating) entity."""
    key: str
    kind: str
    entity_id: str
    entity: Entity | None = None
    epoch: int = 0
    phantom: bool = False                # nothing stored and not owned: answers reads, is never written
    want_owner: bool = False             # the next activation acquires even if nothing is stored
    mailbox: deque = field(default_factory=deque)
    draining: bool = False
    dead: bool = False                   # evicted: in-memory state may be ahead of the store
    ops: OpCache = field(default_factory=OpCache)           # op ids applied: a retry is answered, not re-applied
    outbox: dict = field(default_factory=dict)               # effect op id -> OutEffect (unacknowledged)
    acks: list = field(default_factory=list)                  # effect ids acknowledged since the last entry
    committed: int = 0                   # last version known durable
    pushed: int = -1                     # version of the last fresh push to subscribers (-1: none yet)
    snapshot_seq: int = 0
    last_used: float = 0.0
    next_tick: float = 0.0
    inflight: int = 0                    # outcomes handled but not yet released
    snapshotting: bool = False
