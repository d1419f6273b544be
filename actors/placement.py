"""Which host owns an entity: rendezvous (highest-random-weight) hashing over the host slots.

Every gateway and every host computes the same owner from the key alone: no directory to look up
or keep consistent, and a change in the number of hosts moves only ~1/N of the entities. Hosts are
named slots (`syncopate-host-<i>`) that Ray restarts in place, so a host crash does not move
anything: the entity re-activates on the restarted host. When the slot count changes (an operator
restarts with another --hosts), entities move; the store's epoch fencing makes sure the old owner
can't write after the new one activated.

Rejected alternative: a consistent-hash ring with virtual nodes. Equally good balance needs ~100
vnodes a host and a sorted ring to maintain; with tens of hosts, scoring each slot is as cheap.
"""
from __future__ import annotations

import hashlib


def _score(key: bytes, slot: int) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, salt=slot.to_bytes(8, "little")).digest(), "big")


def owner(key: str, hosts: int) -> int:
    """The slot index (0 <= i < hosts) that owns `key`."""
    if hosts <= 0:
        raise ValueError("no hosts")
    if hosts == 1:
        return 0
    k = key.encode()
    return max(range(hosts), key=lambda slot: _score(k, slot))
