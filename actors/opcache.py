"""The op cache: what an entity remembers of the operations it has applied, so that a retry with the
same op id is answered, not applied twice.

Keyed by (sender, op id): an op id names an operation of one principal; another user's op id never
returns the first user's reply. Each row is the version the operation produced and its packed reply
while that is small. A reply over OP_REPLY_MAX_BYTES is not kept in memory, and the oldest replies
are dropped once the entity's total passes OP_REPLY_BUDGET_BYTES: a retry of such an op is answered
with its version and no payload (the change is not applied twice; the client re-reads if it needs
the value). Rows live for OP_RETRY_WINDOW_S and at most OPS_REMEMBERED per entity: the cache used to
hold 1,024 full replies per entity, one per request, whatever their size, and without the window the
caches of a fixed population kept filling for as long as it ran.

The log entry of a write carries its op id, sender and packed reply, and snapshots carry rows(): a
re-activated entity rebuilds the same cache (EntityHost._activate).
"""
from __future__ import annotations

from collections import OrderedDict, deque

OPS_REMEMBERED = 1024
OP_RETRY_WINDOW_S = 300.0      # a retry comes within seconds, not hours (an op id older than this is
                               # applied again if retried)
OP_REPLY_MAX_BYTES = 4096
OP_REPLY_BUDGET_BYTES = 64 << 10

Row = tuple[int, "bytes | None"]        # (version, packed reply or None)
_NO_ROW: Row = (0, None)


class OpCache:
    __slots__ = ("entries", "at", "bytes", "_with_reply")

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple, Row] = OrderedDict()   # (user, op_id) -> row, oldest first
        self.at: dict[tuple, float] = {}                         # (user, op_id) -> when remembered
        self.bytes = 0                                           # packed replies held
        self._with_reply: deque = deque()                        # keys with a reply, oldest first

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()
        self.at.clear()
        self.bytes = 0
        self._with_reply.clear()

    def lookup(self, user: str | None, op_id: str) -> Row | None:
        hit = self.entries.get((user, op_id))
        if hit is None:
            hit = self.entries.get((None, op_id))     # a legacy entry, recorded before senders were
        return hit

    def rows(self) -> list[list]:
        """[op_id, version, packed reply | None, sender] per row, oldest first (the snapshot's form)."""
        return [[op, v, rb, by] for (by, op), (v, rb) in self.entries.items()]

    def remember(self, by: str | None, op_id: str, version: int, rb: bytes | None, now: float) -> None:
        key = (by, op_id)
        old = self.entries.pop(key, None)
        if old is not None and old[1] is not None:
            self.bytes -= len(old[1])
        if rb is not None and len(rb) > OP_REPLY_MAX_BYTES:
            rb = None
        self.entries[key] = (version, rb)
        self.at[key] = now
        if rb is not None:
            self.bytes += len(rb)
            self._with_reply.append(key)
        cutoff = now - OP_RETRY_WINDOW_S
        entries = self.entries
        while entries and (len(entries) > OPS_REMEMBERED or self.at.get(next(iter(entries)), now) < cutoff):
            k, (_, gone) = entries.popitem(last=False)      # oldest first: insertion order is time order
            self.at.pop(k, None)
            if gone is not None:
                self.bytes -= len(gone)
        wr = self._with_reply
        while wr and (entries.get(wr[0]) or _NO_ROW)[1] is None:
            # keys whose row lapsed (or lost its reply) are at the front (time order too): drop them
            # with the row. Kept until the rebuild below, they held up to 2 x OPS_REMEMBERED keys (a
            # tuple and the op id string, ~120 bytes each) per entity long after the window: ~13 MB/h
            # a host in the 200-user soak until full (docs/performance.md, "Soak").
            wr.popleft()
        while self.bytes > OP_REPLY_BUDGET_BYTES and self._with_reply:
            k = self._with_reply.popleft()
            row = entries.get(k)
            if row is not None and row[1] is not None:
                self.bytes -= len(row[1])
                entries[k] = (row[0], None)
        if len(self._with_reply) > 2 * OPS_REMEMBERED:
            # keys that lapsed from `entries` linger in the deque; rebuild it now and then
            self._with_reply = deque(k for k, (_, r) in entries.items() if r is not None)
