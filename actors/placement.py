"""Which host owns an entity: rendezvous (highest-random-weight) hashing over the live host slots.

Every gateway and every host computes the same owner from the key and the membership view alone
(actors/membership.py: the live slots, with an epoch): no directory to look up or keep consistent.
Each slot scores every key independently, so removing a slot moves only the keys it owned (to the
slot that scored second for each), and adding one moves only the keys it now scores highest for:
~1/N of them (tests/test_membership.py measures both). Hosts are named slots
(`<cluster>-host-<i>`); a host that dies leaves the view (the gateway detects it) and its keys go
to the live slots; when Ray restarts it, it joins again and gets its keys back. Fencing (entity
epochs) and host leases (storage/base.py) make every move safe, whoever still believes otherwise.

Rejected alternative: a consistent-hash ring with virtual nodes. Equally good balance needs ~100
vnodes a host and a sorted ring to maintain; with tens of hosts, scoring each slot is as cheap.
"""
from __future__ import annotations

import hashlib
from typing import Iterable


def _score(key: bytes, slot: int) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, salt=slot.to_bytes(8, "little")).digest(), "big")


def owner(key: str, hosts: int) -> int:
    """The slot index (0 <= i < hosts) that owns `key` when every slot below `hosts` is live."""
    if hosts <= 0:
        raise ValueError("no hosts")
    if hosts == 1:
        return 0
    return owner_among(key, range(hosts))


def owner_among(key: str, slots: Iterable[int]) -> int:
    """The slot of `slots` (the live ones, any order) that owns `key`."""
    k = key.encode()
    best, best_score = -1, -1
    for slot in slots:
        s = _score(k, slot)
        if s > best_score:
            best, best_score = slot, s
    if best < 0:
        raise ValueError("no hosts")
    return best
